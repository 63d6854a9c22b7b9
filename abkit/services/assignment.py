"""The assignment use case: Assign and Track.

Validate the request, assign from the cached config (:class:`~abkit.services.config.ConfigCache`)
with the pure core, and hand exposures and events to the recorders (the local journal, or the
stream). **Nothing acknowledged is lost**: a Track answer, and an Assign answer that reports
``in_experiment`` (with ``Durability.SYNC``, the default), is returned only once the recorder
says its rows are durable -- a group commit shared by every concurrent call -- and a call whose
rows cannot be kept answers UNAVAILABLE instead. The request path never waits on the database.
"""

from __future__ import annotations

import builtins
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from itertools import repeat
from typing import NamedTuple

from abkit.core.assignment import Assignment, Catalog, CompiledExperiment
from abkit.core.limits import (
    MAX_EXPERIMENT_KEYS,
    MAX_FUTURE_SKEW,
    check_attributes,
    check_batch,
    check_event,
    check_unit_id,
    plain_request,
)
from abkit.core.model import Event, check_key
from abkit.core.plain import assign_plain
from abkit.core.recent import recent_keys
from abkit.core.rows import encode_events, escape, exposure_head, row_tail
from abkit.core.targeting import AttributeValue
from abkit.errors import NotFoundError, StoreUnavailableError, ValidationError
from abkit.ports import Clock, Receipt, Recorder
from abkit.services.config import ConfigCache

log = logging.getLogger(__name__)

MAX_EXPOSURE_AGE = timedelta(days=7)
"""A ``LogExposures`` exposure may be at most this old (a client's clock set to 1970 must not
put exposures before every event)."""
_CHECKSUM = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True, slots=True)
class TraceRef:
    """The trace and span of the request that caused a row (W3C ids, lower-case hex)."""

    trace_id: str = ""
    span_id: str = ""


NO_TRACE = TraceRef()


class UnitRequest(NamedTuple):
    """One unit to assign (a named tuple: built per unit of every request)."""

    unit_id: str
    attributes: Mapping[str, AttributeValue]
    experiment_keys: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class ExposureInput:
    """An exposure a client assigned itself (``LogExposures``): what it served, and when."""

    experiment_key: str
    unit_id: str
    arm_key: str
    model_version: str
    config_checksum: str
    exposed_at: datetime
    trace: TraceRef = NO_TRACE


@dataclass(frozen=True, slots=True)
class TrackInput:
    unit_id: str
    metric: str
    value: float = 1.0
    occurred_at: datetime | None = None
    event_id: str = ""


class Pending(NamedTuple):
    """Rows a recorder took and has not yet made durable: what an answer waits for. ``failure``
    is the message of the :class:`~abkit.errors.StoreUnavailableError` the caller gets when they
    are not durable in time."""

    receipt: Receipt
    failure: str


class Durability(StrEnum):
    """Whether an Assign answer waits for its exposures to be durable (events always do)."""

    SYNC = "sync"
    ASYNC = "async"


class AssignmentService:
    """Assign units and accept KPI events; the request path never waits on the database."""

    def __init__(
        self,
        config: ConfigCache,
        exposures: Recorder,
        events: Recorder,
        clock: Clock,
        pseudonymize: Callable[[str], str] | None = None,
        recent_exposures: int = 200_000,
        *,
        durability: Durability = Durability.SYNC,
        durable_timeout: float = 5.0,
    ) -> None:
        self._config = config
        self._exposures = exposures
        self._events = events
        self._clock = clock
        self._sync = durability is Durability.SYNC
        self._timeout = durable_timeout
        self._not_durable = (
            f"exposures were not durable within {durable_timeout:g} s; retry shortly"
        )
        # With ABKIT_UNIT_ID_KEY, rows store HMAC(key, unit id); assignment hashes the raw id.
        self._stored_id = pseudonymize or _identity
        # Only the first exposure of a unit is stored; a unit asking again (the common case)
        # need not be queued and written again just to be discarded by the database.
        self._logged = recent_keys(recent_exposures)

    # Each use case comes in two steps: ``start_*`` validates, answers and hands the rows to the
    # recorder, returning what is still to become durable; :meth:`settle` blocks until it is.
    # The gRPC server awaits that instead, on its event loop (abkit.rpc.durable).

    @property
    def durable_timeout(self) -> float:
        """Seconds an answer waits for its rows to be durable before it fails UNAVAILABLE."""
        return self._timeout

    def settle(self, pending: Pending | None) -> None:
        """Block until ``pending`` is durable; :class:`StoreUnavailableError` when it is not
        within :attr:`durable_timeout`."""
        if pending is not None and not pending.receipt.wait(self._timeout):
            raise StoreUnavailableError(pending.failure)

    def assign(
        self,
        unit_id: str,
        attributes: Mapping[str, AttributeValue],
        experiment_keys: Sequence[str] = (),
        trace: TraceRef = NO_TRACE,
    ) -> list[Assignment]:
        answers, pending = self.start_assign(unit_id, attributes, experiment_keys, trace)
        self.settle(pending)
        return answers

    def start_assign(
        self,
        unit_id: str,
        attributes: Mapping[str, AttributeValue],
        experiment_keys: Sequence[str] = (),
        trace: TraceRef = NO_TRACE,
    ) -> tuple[list[Assignment], Pending | None]:
        request = UnitRequest(unit_id, attributes, experiment_keys)
        _check_request(request)
        results, pending = self._assign_checked([request], trace, batched=False)
        return results[0], pending

    def assign_batch(
        self, requests: Sequence[UnitRequest], trace: TraceRef = NO_TRACE
    ) -> list[list[Assignment]]:
        results, pending = self.start_assign_batch(requests, trace)
        self.settle(pending)
        return results

    def start_assign_batch(
        self, requests: Sequence[UnitRequest], trace: TraceRef = NO_TRACE
    ) -> tuple[list[list[Assignment]], Pending | None]:
        check_batch(len(requests), "requests")
        for i, request in enumerate(requests):
            _check_request(request, i)
        return self._assign_checked(requests, trace, batched=True)

    def start_assign_plain(
        self,
        units: list[str],
        keys: tuple[str, ...],
        trace: TraceRef = NO_TRACE,
        *,
        batched: bool = True,
    ) -> tuple[list[list[Assignment]], Pending | None]:
        """:meth:`start_assign_batch` for a plain batch (:func:`abkit.core.plain.read_plain_batch`:
        unit ids already checked, no attributes, the same ``keys`` for every unit), answered one
        experiment at a time: the answers come back per experiment (``columns[e][u]``), not per
        unit. Same answers, same rows, same errors (named as :meth:`start_assign`'s when not
        ``batched``)."""
        if batched:
            check_batch(len(units), "requests")
        _check_key_count(keys, 0 if batched else None)
        request = UnitRequest(units[0], {}, keys)
        experiments = _resolve(self._config.catalog, [request], batched=batched)
        tail = row_tail(self._clock.now(), trace.trace_id, trace.span_id)
        stored_id = None if self._stored_id is _identity else self._stored_id
        logged = self._logged
        columns: list[list[Assignment]] = []
        texts: list[str] = []
        new: list[tuple[str, list[str]]] = []
        count = 0
        for experiment in experiments[0]:
            answers, text, rows = assign_plain(units, experiment, logged, tail, stored_id)
            columns.append(answers)
            if rows:
                texts.append(text)
                new.append((experiment.key, rows))
                count += len(rows)
        pending = None
        if new:
            pending = self._record_exposures("".join(texts), count, sync=self._sync)
            for key, rows in new:
                logged.update(zip(repeat(key), rows))
        return columns, pending

    def _assign_checked(
        self, requests: Sequence[UnitRequest], trace: TraceRef, *, batched: bool
    ) -> tuple[list[list[Assignment]], Pending | None]:
        # Resolve every key first: an unknown key fails the call before anything is logged.
        resolved = _resolve(self._config.catalog, requests, batched=batched)
        results: list[list[Assignment]] = []
        # Exposure rows are encoded right here (abkit.core.rows): the answer's own part is
        # prebuilt on the answer, the request's time and trace once per call.
        lines: list[str] = []
        keys: list[tuple[str, str]] = []
        logged = self._logged
        tail = ""
        for request, experiments in zip(requests, resolved, strict=True):
            unit_id, attributes = request.unit_id, request.attributes
            answers = [e.assign(unit_id, attributes) for e in experiments]
            stored_id = None
            for a in answers:
                if a.in_experiment and (key := (a.experiment_key, unit_id)) not in logged:
                    if stored_id is None:
                        stored_id = escape(self._stored_id(unit_id))
                        tail = tail or row_tail(self._clock.now(), trace.trace_id, trace.span_id)
                    lines.append(f"{a.row_head}{tail}{stored_id}\n")
                    keys.append(key)
            results.append(answers)
        pending = None
        if lines:
            pending = self._record_exposures("".join(lines), len(lines), sync=self._sync)
            logged.update(keys)
        return results, pending

    def _record_exposures(self, text: str, rows: int, *, sync: bool) -> Pending | None:
        """What the answer waits for (sync), or nothing: handed over without waiting (async)."""
        try:
            receipt = self._exposures.record(text, rows)
        except StoreUnavailableError as exc:
            if sync:
                raise StoreUnavailableError(
                    f"exposures cannot be recorded right now ({exc}); retry shortly"
                ) from exc
            log.warning("exposures not recorded, %d dropped: %s", rows, exc)
            return None
        if not sync:
            return None
        return Pending(receipt, self._not_durable)

    def log_exposures(self, items: Sequence[ExposureInput]) -> int:
        accepted, pending = self.start_log_exposures(items)
        self.settle(pending)
        return accepted

    def start_log_exposures(self, items: Sequence[ExposureInput]) -> tuple[int, Pending | None]:
        """Store the exposures of units a client assigned itself (``LocalClient``); durable
        before it returns, whatever ``durability`` says (the client retries otherwise).

        Every item is checked before any is stored: a known experiment, one of its arms with
        that arm's model version, a time with a zone and not in the future. The client's answer
        is trusted beyond that (it assigned with the config this server streamed it).
        """
        check_batch(len(items), "exposures")
        catalog = self._config.catalog
        now = self._clock.now()
        lines: list[str] = []
        keys: list[tuple[str, str]] = []
        logged = self._logged
        for i, item in enumerate(items):
            row_head = _checked_exposure(item, catalog, now, f"exposures[{i}].")
            key = (item.experiment_key, item.unit_id)
            if key in logged:
                continue
            tail = row_tail(item.exposed_at, item.trace.trace_id, item.trace.span_id)
            lines.append(f"{row_head}{tail}{escape(self._stored_id(item.unit_id))}\n")
            keys.append(key)
        pending = None
        if lines:
            pending = self._record_exposures("".join(lines), len(lines), sync=True)
            logged.update(keys)
        return len(items), pending

    def track(self, item: TrackInput, trace: TraceRef = NO_TRACE) -> Event:
        return self.track_batch([item], trace, single=True)[0]

    def track_batch(
        self, items: Sequence[TrackInput], trace: TraceRef = NO_TRACE, *, single: bool = False
    ) -> list[Event]:
        events, pending = self.start_track_batch(items, trace, single=single)
        self.settle(pending)
        return events

    def start_track_batch(
        self, items: Sequence[TrackInput], trace: TraceRef = NO_TRACE, *, single: bool = False
    ) -> tuple[list[Event], Pending]:
        if not single:
            check_batch(len(items), "events")
        now = self._clock.now()
        events = [
            self._event(item, now, trace, "" if single else f"events[{i}].")
            for i, item in enumerate(items)
        ]
        if self._stored_id is not _identity:
            events = [e._replace(unit_id=self._stored_id(e.unit_id)) for e in events]
        try:
            receipt = self._events.record(encode_events(events), len(events))
        except StoreUnavailableError as exc:
            raise StoreUnavailableError(
                f"events cannot be recorded right now ({exc}); retry with the same event_id shortly"
            ) from exc
        return events, Pending(
            receipt,
            f"events were not durable within {self._timeout:g} s; retry with the same event_id "
            "shortly",
        )

    @staticmethod
    def _event(item: TrackInput, now: datetime, trace: TraceRef, prefix: str) -> Event:
        value, occurred_at, event_id = check_event(
            item.unit_id, item.metric, item.value, item.occurred_at, item.event_id, now, prefix
        )
        event_id = event_id or os.urandom(16).hex()
        return Event(
            event_id, item.unit_id, item.metric, value, occurred_at, trace.trace_id, trace.span_id
        )


_HEX = frozenset("0123456789abcdef")


def _checked_exposure(item: ExposureInput, catalog: Catalog, now: datetime, where: str) -> str:
    """Check one ``LogExposures`` item against the config; its exposure row's head."""
    check_unit_id(item.unit_id, f"{where}unit_id")
    if item.experiment_key not in catalog:
        check_key(item.experiment_key, f"{where}experiment_key")
        raise ValidationError(
            f"{where}experiment_key",
            f"experiment {item.experiment_key!r} is not known to this server",
        )
    experiment = catalog.get(item.experiment_key).experiment
    arm = next((a for a in experiment.arms if a.key == item.arm_key), None)
    if arm is None or arm.model_version != item.model_version:
        raise ValidationError(
            f"{where}arm_key",
            f"{item.experiment_key!r} has no arm {item.arm_key!r} serving "
            f"{item.model_version!r}; its arms are "
            + ", ".join(f"{a.key}={a.model_version}" for a in experiment.arms),
        )
    if item.exposed_at.tzinfo is None:
        raise ValidationError(f"{where}exposed_at", "must carry a time zone")
    if item.exposed_at - now > MAX_FUTURE_SKEW:
        raise ValidationError(
            f"{where}exposed_at",
            f"is more than {MAX_FUTURE_SKEW} in the future ({item.exposed_at.isoformat()}); "
            "check the client's clock",
        )
    if now - item.exposed_at > MAX_EXPOSURE_AGE:
        raise ValidationError(
            f"{where}exposed_at",
            f"is more than {MAX_EXPOSURE_AGE.days} days old ({item.exposed_at.isoformat()}); "
            "a client's queue never holds one that long: check the client's clock",
        )
    if not _CHECKSUM.fullmatch(item.config_checksum):
        raise ValidationError(
            f"{where}config_checksum",
            f"must be the experiment's config checksum (16 lower-case hex digits), got "
            f"{item.config_checksum[:40]!r}",
        )
    _check_trace(item.trace, where)
    return exposure_head(item.experiment_key, arm.key, arm.model_version, item.config_checksum)


def _check_trace(trace: TraceRef, where: str) -> None:
    for name, value, digits in (("trace_id", trace.trace_id, 32), ("span_id", trace.span_id, 16)):
        if value and (len(value) != digits or not _HEX.issuperset(value)):
            raise ValidationError(
                f"{where}{name}", f"must be empty or {digits} lower-case hex digits, got {value!r}"
            )


def _identity(unit_id: str) -> str:
    return unit_id


def _check_request(request: UnitRequest, index: int | None = None) -> None:
    """Check one unit; ``index`` (its place in a batch) only names the field in an error."""
    unit_id = request.unit_id
    # The common case (printable ASCII, short enough) passes in one C call, without building a
    # field name.
    if not plain_request(unit_id, None):
        check_unit_id(unit_id, _field(index, "unit_id"))
    if request.attributes:
        check_attributes(request.attributes, _field(index, "attributes"))
    _check_key_count(request.experiment_keys, index)


def _check_key_count(keys: Sequence[str], index: int | None) -> None:
    if len(keys) > MAX_EXPERIMENT_KEYS:
        raise ValidationError(
            _field(index, "experiment_keys"), f"at most {MAX_EXPERIMENT_KEYS} keys, got {len(keys)}"
        )


def _field(index: int | None, name: str) -> str:
    return name if index is None else f"requests[{index}].{name}"
    # Key formats are checked only when a key is not found (see _resolve): a key the catalog
    # knows is valid by construction, and this runs for every unit of every request.


def _resolve(
    catalog: Catalog, requests: Sequence[UnitRequest], *, batched: bool
) -> builtins.list[tuple[CompiledExperiment, ...]]:
    """The experiments of each request, resolved once per distinct key list."""
    seen: dict[tuple[str, ...], tuple[CompiledExperiment, ...]] = {}
    resolved = []
    for i, request in enumerate(requests):
        keys = request.experiment_keys
        if type(keys) is not tuple:
            keys = tuple(keys)
        experiments = seen.get(keys)
        if experiments is None:
            try:
                experiments = seen[keys] = catalog.resolve(keys)
            except NotFoundError:
                prefix = f"requests[{i}]." if batched else ""
                for k, key in enumerate(keys):
                    check_key(key, f"{prefix}experiment_keys[{k}]")  # malformed: 400, not 404
                raise
        resolved.append(experiments)
    return resolved
