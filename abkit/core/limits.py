"""Limits on what a request may carry, and the checks that enforce them.

Every limit is here, documented once (docs/grpc-api.md, "Limits"), and every check raises
:class:`ValidationError` naming the field -- the gRPC edge turns that into INVALID_ARGUMENT.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from abkit.core.native import speedups
from abkit.core.targeting import AttributeValue
from abkit.errors import ValidationError

MAX_UNIT_ID_BYTES = 256
"""A unit id is 1..256 bytes of UTF-8 without control characters."""
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_NAME_LENGTH = 64
MAX_ATTRIBUTE_STRING_BYTES = 1024
MAX_EXPERIMENT_KEYS = 100
MAX_BATCH = 1000
"""Most units per AssignBatch call and events per TrackBatch call."""
METRIC_PATTERN = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")
"""Metric names: lower case letter first, then letters, digits, '_' or '.', at most 64."""
MAX_FUTURE_SKEW = timedelta(hours=1)
"""Events (and exposures) may be stamped at most this far in the future (client clock skew)."""
MAX_EVENT_ID_LENGTH = 64
EVENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


def _has_control_characters(text: str) -> bool:
    # Fast path: printable ASCII is the overwhelmingly common case.
    if text.isascii():
        return not text.isprintable()
    return any(unicodedata.category(ch) in ("Cc", "Cs") for ch in text)


def check_unit_id(unit_id: object, field: str = "unit_id") -> str:
    # Fast path for the common case: printable ASCII of an acceptable length.
    if type(unit_id) is str and 0 < len(unit_id) <= MAX_UNIT_ID_BYTES and unit_id.isascii():
        if unit_id.isprintable():
            return unit_id
        raise ValidationError(field, "must not contain control characters or lone surrogates")
    if not isinstance(unit_id, str) or not unit_id:
        raise ValidationError(field, "must be a non-empty string")
    if len(unit_id) > MAX_UNIT_ID_BYTES or len(unit_id.encode("utf-8", "surrogatepass")) > (
        MAX_UNIT_ID_BYTES
    ):
        raise ValidationError(field, f"must be at most {MAX_UNIT_ID_BYTES} bytes of UTF-8")
    if _has_control_characters(unit_id):
        raise ValidationError(field, "must not contain control characters or lone surrogates")
    return unit_id


def check_metric(metric: object, field: str = "metric") -> str:
    if not isinstance(metric, str) or not METRIC_PATTERN.match(metric):
        raise ValidationError(
            field,
            f"{metric!r} is not a metric name: use a lower-case letter, then up to 63 of "
            "a-z, 0-9, '_' or '.'",
        )
    return metric


def check_value(value: object, field: str = "value") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(field, f"must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValidationError(field, f"must be a finite number, got {value!r}")
    return number


def check_event_id(event_id: object, field: str = "event_id") -> str:
    if not isinstance(event_id, str) or not EVENT_ID_PATTERN.match(event_id):
        raise ValidationError(
            field, "must be 1-64 characters of A-Z, a-z, 0-9, '_', '.', ':' or '-'"
        )
    return event_id


_DOUBLE_MAX = 1.7976931348623157e308
"""The largest finite double (``sys.float_info.max``): a larger integer cannot be sent."""
_INT_EXACT = 2**53
"""Integers up to this size are exact as doubles (compared with an int: cheaper than a float)."""


def plainly_valid(attributes: Mapping[str, AttributeValue]) -> bool:
    """The common case, decided cheaply (this runs for every assignment that has attributes):
    printable ASCII names of an acceptable length, strings short enough in any encoding,
    booleans, integers and finite floats. False sends the mapping to the full check."""
    if len(attributes) > MAX_ATTRIBUTES:
        return False
    for name in attributes:
        if not _plain_name(name):
            return False
    return _plain_values(attributes)


def plain_request_reference(unit_id: object, attributes: object) -> bool:
    """The common case of a unit id and its attributes, decided cheaply: a unit id of printable
    ASCII and an acceptable length, and attributes ``None`` or a dict :func:`plainly_valid`
    accepts. False sends both to the full checks (:func:`check_unit_id`,
    :func:`check_attributes`), which accept, convert or name the problem.

    The reference: :data:`plain_request` is its C twin (``abkit/core/_speedups.c``) when built,
    one call of about 40 ns where this costs 300 -- it runs for every assignment in
    ``LocalClient``. A property test holds the two equal."""
    return (
        type(unit_id) is str
        and 0 < len(unit_id) <= MAX_UNIT_ID_BYTES
        and unit_id.isascii()
        and unit_id.isprintable()
        and (attributes is None or (type(attributes) is dict and plainly_valid(attributes)))
    )


plain_request: Callable[[object, object], bool] = (
    plain_request_reference
    if speedups is None
    else speedups.PlainRequests(
        max_unit_bytes=MAX_UNIT_ID_BYTES,
        max_attributes=MAX_ATTRIBUTES,
        max_name_length=MAX_ATTRIBUTE_NAME_LENGTH,
        max_string_bytes=MAX_ATTRIBUTE_STRING_BYTES,
        int_exact=_INT_EXACT,
    )
)
"""``plain_request_reference``, in C when built."""


def _plain_name(name: object) -> bool:
    return (
        type(name) is str
        and 0 < len(name) <= MAX_ATTRIBUTE_NAME_LENGTH
        and name.isascii()
        and name.isprintable()
    )


def _plain_values(attributes: Mapping[str, AttributeValue]) -> bool:
    for value in attributes.values():
        kind = type(value)
        if kind is str:
            # 4 bytes per character at most: short strings cannot exceed the limit.
            if len(value) * 4 > MAX_ATTRIBUTE_STRING_BYTES:  # type: ignore[arg-type]
                return False
        elif kind is int:
            # Exact as a double (what the wire carries), so a caller's int compares as the
            # server's double would; a larger one takes the full check.
            if not -_INT_EXACT <= value <= _INT_EXACT:  # type: ignore[operator]
                return False
        elif kind is float:
            if value - value != 0.0:  # type: ignore[operator] # NaN and infinities
                return False
        elif kind is not bool:
            return False
    return True


def check_attributes(
    attributes: Mapping[str, AttributeValue], field: str = "attributes"
) -> Mapping[str, AttributeValue]:
    if plainly_valid(attributes):
        return attributes
    if len(attributes) > MAX_ATTRIBUTES:
        raise ValidationError(field, f"at most {MAX_ATTRIBUTES} attributes, got {len(attributes)}")
    for name, value in attributes.items():
        where = f"{field}[{name[:MAX_ATTRIBUTE_NAME_LENGTH]!r}]"
        if not name or len(name) > MAX_ATTRIBUTE_NAME_LENGTH or _has_control_characters(name):
            raise ValidationError(
                where,
                f"attribute names are 1-{MAX_ATTRIBUTE_NAME_LENGTH} characters without control "
                "characters",
            )
        if isinstance(value, str):
            if len(value.encode("utf-8", "surrogatepass")) > MAX_ATTRIBUTE_STRING_BYTES:
                raise ValidationError(
                    where, f"string values are at most {MAX_ATTRIBUTE_STRING_BYTES} bytes"
                )
        elif isinstance(value, bool):
            pass
        elif isinstance(value, int | float):
            if isinstance(value, int) and not -_DOUBLE_MAX <= value <= _DOUBLE_MAX:
                raise ValidationError(where, "numbers must fit a double (the wire's number)")
            if not math.isfinite(value):
                raise ValidationError(where, f"numbers must be finite, got {value!r}")
        else:
            raise ValidationError(where, "must be a string, a number or a boolean")
    return attributes


def check_event(
    unit_id: object,
    metric: object,
    value: object,
    occurred_at: datetime | None,
    event_id: str,
    now: datetime,
    prefix: str = "",
) -> tuple[float, datetime, str]:
    """A KPI event's fields as the server checks them (``prefix`` names the event in a batch):
    its value, its time (``now`` when absent) and its id ("" when absent: the caller makes one).
    """
    check_unit_id(unit_id, f"{prefix}unit_id")
    check_metric(metric, f"{prefix}metric")
    number = check_value(value, f"{prefix}value")
    at = now if occurred_at is None else occurred_at
    if at.tzinfo is None:
        raise ValidationError(f"{prefix}occurred_at", "must carry a time zone")
    if at - now > MAX_FUTURE_SKEW:
        raise ValidationError(
            f"{prefix}occurred_at",
            f"is more than {MAX_FUTURE_SKEW} in the future ({at.isoformat()}); "
            "check the client's clock",
        )
    checked_id = check_event_id(event_id, f"{prefix}event_id") if event_id else ""
    return number, at, checked_id


def check_batch(size: int, field: str) -> None:
    if size == 0:
        raise ValidationError(field, "must not be empty")
    if size > MAX_BATCH:
        raise ValidationError(field, f"at most {MAX_BATCH} items per call, got {size}")
