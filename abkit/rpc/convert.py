"""proto <-> core conversion. Pure functions of messages; no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.message import DecodeError

from abkit.core.assignment import Assignment
from abkit.core.limits import MAX_BATCH
from abkit.core.model import Event, Reason
from abkit.core.targeting import AttributeValue
from abkit.errors import ValidationError
from abkit.services.assignment import NO_TRACE, ExposureInput, TraceRef, TrackInput, UnitRequest
from abkit.v1 import assignment_pb2 as pb

_REASONS = {reason: getattr(pb, f"REASON_{reason.value}") for reason in Reason}
REASON_FROM_PROTO = {v: k for k, v in _REASONS.items()}


def attributes_from_proto(attributes: Any, field: str) -> dict[str, AttributeValue]:
    out: dict[str, AttributeValue] = {}
    for name, value in attributes.items():
        kind = value.WhichOneof("kind")
        if kind is None:
            raise ValidationError(
                f"{field}[{name[:64]!r}]",
                "has no value; set one of string_value, number_value, bool_value",
            )
        out[name] = getattr(value, kind)
    return out


_NO_ATTRIBUTES: dict[str, AttributeValue] = {}


def unit_request_from_proto(request: Any, index: int | None = None) -> UnitRequest:
    """``index`` is the unit's position in a batch; it only names the field in an error."""
    attributes = request.attributes
    if attributes:
        field = "attributes" if index is None else f"requests[{index}].attributes"
        values = attributes_from_proto(attributes, field)
    else:
        values = _NO_ATTRIBUTES
    # A tuple, not the message's repeated container: hashable, so key lists resolve once.
    # Indexing the (common) single key is ~2x cheaper than iterating the container.
    keys = request.experiment_keys
    return UnitRequest(request.unit_id, values, (keys[0],) if len(keys) == 1 else tuple(keys))


def unit_requests_from_proto(requests: Any) -> list[UnitRequest]:
    """The units of an ``AssignBatchRequest``: :func:`unit_request_from_proto` for each, with the
    common case (no attributes) in one tight loop -- this runs for every unit of every batch."""
    units: list[UnitRequest] = []
    append = units.append
    build = tuple.__new__  # UnitRequest's fields, without its Python-level constructor
    for i, r in enumerate(requests):
        if r.attributes:
            append(unit_request_from_proto(r, i))
            continue
        keys = r.experiment_keys
        append(
            build(
                UnitRequest,
                (r.unit_id, _NO_ATTRIBUTES, (keys[0],) if len(keys) == 1 else tuple(keys)),
            )
        )
    return units


def assignment_to_proto(a: Assignment) -> Any:
    return pb.Assignment(
        experiment_key=a.experiment_key,
        arm_key=a.arm_key,
        model_version=a.model_version,
        reason=_REASONS[a.reason],
        in_experiment=a.in_experiment,
    )


def assign_response(assignments: list[Assignment]) -> Any:
    return pb.AssignResponse(assignments=[assignment_to_proto(a) for a in assignments])


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Field 1 (``responses``) of AssignBatchResponse, wire type 2 (length-delimited).
_BATCH_ENTRY_TAG = b"\x0a"


class ResponseCache:
    """Serialized ``AssignResponse`` bytes, one per distinct list of answers.

    Answers are shared, long-lived :class:`Assignment` objects (one per experiment, arm and
    reason), so a unit's response is one of a few messages: it is built and serialized once,
    and a reply is made of those bytes -- an ``AssignBatchResponse`` is the concatenation of
    its entries, each framed as field 1 (tag and length, the protobuf encoding of a repeated
    message field), which spares building and serializing a hundred messages per batch.
    Keyed by the answers' identities and checked by identity, so an answer from a replaced
    config can never be mistaken for another; bounded by clearing when it grows past ``limit``.
    """

    __slots__ = ("_entries", "_limit")

    def __init__(self, limit: int = 4096) -> None:
        self._entries: dict[tuple[int, ...], tuple[tuple[Assignment, ...], bytes, bytes]] = {}
        self._limit = limit

    def _entry(self, assignments: list[Assignment]) -> tuple[bytes, bytes]:
        key = tuple(map(id, assignments))
        entry = self._entries.get(key)
        if entry is not None and all(a is b for a, b in zip(entry[0], assignments, strict=True)):
            return entry[1], entry[2]
        single = assign_response(assignments).SerializeToString()
        framed = _BATCH_ENTRY_TAG + _varint(len(single)) + single
        if len(self._entries) >= self._limit:
            self._entries.clear()
        self._entries[key] = (tuple(assignments), single, framed)
        return single, framed

    def response(self, assignments: list[Assignment]) -> bytes:
        """The serialized ``AssignResponse`` for these answers."""
        if len(assignments) == 1:  # the common case: one experiment per request
            only = assignments[0]
            entry = self._entries.get((id(only),))
            if entry is not None and entry[0][0] is only:
                return entry[1]
        return self._entry(assignments)[0]

    def batch_response(self, results: list[list[Assignment]]) -> bytes:
        """The serialized ``AssignBatchResponse``: each unit's entry, in request order."""
        entries = self._entries
        parts = []
        for answers in results:
            entry = entries.get((id(answers[0]),)) if len(answers) == 1 else None
            if entry is not None and entry[0][0] is answers[0]:
                parts.append(entry[2])
            else:
                parts.append(self._entry(answers)[1])
        return b"".join(parts)

    def columns_response(self, columns: list[list[Assignment]]) -> bytes:
        """:meth:`batch_response` for answers given per experiment (``columns[e][u]``, from
        :meth:`~abkit.services.assignment.AssignmentService.start_assign_plain`)."""
        if len(columns) != 1:
            return self.batch_response([list(answers) for answers in zip(*columns, strict=True)])
        answers = columns[0]
        # A few distinct answers among many units: each one's framed entry once, then C loops.
        distinct = dict(zip(map(id, answers), answers, strict=True))
        framed = {i: self._entry([a])[1] for i, a in distinct.items()}
        return b"".join(map(framed.__getitem__, map(id, answers)))


def _parsed(message: Any, data: bytes) -> Any:
    """A request message from its wire bytes; a body protobuf cannot read is the caller's error
    (INVALID_ARGUMENT), not the server's."""
    try:
        return message.FromString(data)
    except DecodeError as exc:
        name = message.DESCRIPTOR.name
        raise ValidationError("request", f"is not a valid {name}: {exc}") from None


def assign_request(data: bytes) -> Any:
    return _parsed(pb.AssignRequest, data)


def assign_batch_request(data: bytes) -> Any:
    return _parsed(pb.AssignBatchRequest, data)


def wire(message: Any) -> bytes:
    """Response serializer that also passes already-serialized replies through."""
    if type(message) is bytes:
        return message
    return message.SerializeToString()  # type: ignore[no-any-return]


def track_input_from_proto(request: Any, field: str = "") -> TrackInput:
    occurred_at: datetime | None = None
    if request.HasField("occurred_at"):
        ts = request.occurred_at
        if not (0 <= ts.nanos < 1_000_000_000):
            raise ValidationError(f"{field}occurred_at", "nanos must be in [0, 1e9)")
        try:
            occurred_at = datetime.fromtimestamp(ts.seconds, UTC).replace(
                microsecond=ts.nanos // 1000
            )
        except (OverflowError, OSError, ValueError):
            raise ValidationError(f"{field}occurred_at", "is not a representable time") from None
    return TrackInput(
        unit_id=request.unit_id,
        metric=request.metric,
        value=request.value if request.HasField("value") else 1.0,
        occurred_at=occurred_at,
        event_id=request.event_id,
    )


def event_ids(events: list[Event]) -> list[str]:
    return [e.event_id for e in events]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def exposure_inputs_from_proto(request: Any) -> list[ExposureInput]:
    """The exposures of a ``LogExposuresRequest``, in order (``exposures[i]`` in errors counts
    across groups); the parallel columns of each group are checked here."""
    items: list[ExposureInput] = []
    for g, group in enumerate(request.groups):
        units, times = group.unit_ids, group.exposed_at_unix_nanos
        traces, spans = group.trace_ids, group.span_ids
        if len(times) != len(units):
            raise ValidationError(
                f"groups[{g}].exposed_at_unix_nanos",
                f"has {len(times)} times for {len(units)} unit ids; give one per unit",
            )
        for name, column in (("trace_ids", traces), ("span_ids", spans)):
            if column and len(column) != len(units):
                raise ValidationError(
                    f"groups[{g}].{name}", f"has {len(column)} ids for {len(units)} unit ids"
                )
        if len(items) + len(units) > MAX_BATCH:
            raise ValidationError("groups", f"at most {MAX_BATCH} exposures per call")
        head = (group.experiment_key, group.arm_key, group.model_version, group.config_checksum)
        for i, unit in enumerate(units):
            trace = NO_TRACE
            if traces or spans:
                trace = TraceRef(traces[i] if traces else "", spans[i] if spans else "")
            at = _EPOCH + timedelta(microseconds=times[i] // 1000)  # exact, as Track's
            items.append(ExposureInput(head[0], unit, head[1], head[2], head[3], at, trace))
    return items
