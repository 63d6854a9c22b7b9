"""Use cases: sequence the pure core and the ports. No SQL, no gRPC, no Flask here.

* :class:`ConfigCache` -- the experiment config a server answers from, refreshed from the store.
* :class:`AssignmentService` -- Assign/Track: validate, assign from the cached config, hand
  exposures and events to the background writers.
* :class:`ExperimentService` -- apply (idempotent, refusing to change what a running experiment
  must keep), list, show, start, pause; every change is written to the audit trail.
"""

from __future__ import annotations

import builtins
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

from abkit.core.assignment import Assignment, Catalog, CompiledExperiment, Exposure
from abkit.core.limits import (
    MAX_EXPERIMENT_KEYS,
    MAX_UNIT_ID_BYTES,
    check_attributes,
    check_batch,
    check_event_id,
    check_metric,
    check_unit_id,
    check_value,
)
from abkit.core.model import Event, Experiment, ExperimentStatus, check_key, validate_catalog
from abkit.core.spec import experiment_to_dict
from abkit.core.targeting import AttributeValue
from abkit.errors import (
    AbkitError,
    ConflictError,
    NotFoundError,
    StoreUnavailableError,
    ValidationError,
)
from abkit.ports import AuditEntry, Clock, DecisionRecord, ExperimentRecord, Store

log = logging.getLogger(__name__)

MAX_FUTURE_SKEW = timedelta(hours=1)
"""Events may be stamped at most this far in the future (client clock skew)."""


class Sink(Protocol):
    def submit(self, items: Sequence[Any]) -> bool: ...


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
class TrackInput:
    unit_id: str
    metric: str
    value: float = 1.0
    occurred_at: datetime | None = None
    event_id: str = ""


class ConfigCache:
    """The compiled experiment config, swapped atomically on refresh.

    A failed refresh (store down, invalid config) keeps serving the last good config: assignment
    must keep answering while the database is away.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._catalog: Catalog | None = None
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self.failures = 0
        self._signature: tuple[tuple[str, int], ...] = ()

    @property
    def loaded(self) -> bool:
        return self._catalog is not None

    @property
    def catalog(self) -> Catalog:
        catalog = self._catalog
        if catalog is None:
            raise StoreUnavailableError(
                "the experiment config has not been loaded yet; the store may be unreachable"
            )
        return catalog

    def refresh(self) -> bool:
        """Reload from the store; True on success."""
        try:
            with self._store.transaction() as tx:
                records = tx.experiments.list()
            signature = tuple((r.key, r.revision) for r in records)
            if signature == self._signature and self._catalog is not None:
                self.last_error = None
                return True  # unchanged: keep the compiled config (and every cache keyed on it)
            catalog = Catalog(r.experiment for r in records)
        except AbkitError as exc:
            self.last_error = str(exc)
            self.failures += 1
            log.warning("experiment config refresh failed, serving the previous config: %s", exc)
            return False
        with self._lock:
            self._catalog = catalog
            self._signature = signature
            self.last_error = None
        return True


class RecentKeys:
    """A bounded set of recently seen keys: two generations, the older dropped when full.

    Remembers at least ``capacity / 2`` and at most ``capacity`` of the latest keys; forgetting
    one only costs a redundant (idempotent) write later, never a wrong answer. Not locked: set
    operations are atomic under the GIL, and the one race (two threads rotating generations at
    once) can only forget keys.
    """

    __slots__ = ("_capacity", "_current", "_previous")

    def __init__(self, capacity: int) -> None:
        self._capacity = max(2, capacity)
        self._current: set[tuple[str, str]] = set()
        self._previous: set[tuple[str, str]] = set()

    def __contains__(self, key: object) -> bool:
        return key in self._current or key in self._previous

    def update(self, keys: Iterable[tuple[str, str]]) -> None:
        self._current.update(keys)
        if len(self._current) >= self._capacity // 2:
            self._previous, self._current = self._current, set()


class AssignmentService:
    """Assign units and accept KPI events; the request path never waits on the database."""

    def __init__(
        self,
        config: ConfigCache,
        exposures: Sink,
        events: Sink,
        clock: Clock,
        pseudonymize: Callable[[str], str] | None = None,
        recent_exposures: int = 200_000,
    ) -> None:
        self._config = config
        self._exposures = exposures
        self._events = events
        self._clock = clock
        # With ABKIT_UNIT_ID_KEY, rows store HMAC(key, unit id); assignment hashes the raw id.
        self._stored_id = pseudonymize or _identity
        # Only the first exposure of a unit is stored; a unit asking again (the common case)
        # need not be queued and written again just to be discarded by the database.
        self._logged = RecentKeys(recent_exposures)

    def assign(
        self,
        unit_id: str,
        attributes: Mapping[str, AttributeValue],
        experiment_keys: Sequence[str] = (),
        trace: TraceRef = NO_TRACE,
    ) -> list[Assignment]:
        request = UnitRequest(unit_id, attributes, experiment_keys)
        _check_request(request)
        return self._assign_checked([request], trace, batched=False)[0]

    def assign_batch(
        self, requests: Sequence[UnitRequest], trace: TraceRef = NO_TRACE
    ) -> list[list[Assignment]]:
        check_batch(len(requests), "requests")
        for i, request in enumerate(requests):
            _check_request(request, i)
        return self._assign_checked(requests, trace, batched=True)

    def _assign_checked(
        self, requests: Sequence[UnitRequest], trace: TraceRef, *, batched: bool
    ) -> list[list[Assignment]]:
        # Resolve every key first: an unknown key fails the call before anything is logged.
        resolved = _resolve(self._config.catalog, requests, batched=batched)
        now = self._clock.now()
        results: list[list[Assignment]] = []
        exposures: list[Exposure] = []
        keys: list[tuple[str, str]] = []
        logged = self._logged
        for request, experiments in zip(requests, resolved, strict=True):
            unit_id, attributes = request.unit_id, request.attributes
            answers = [e.assign(unit_id, attributes) for e in experiments]
            stored_id = None
            for a in answers:
                if a.in_experiment and (key := (a.experiment_key, unit_id)) not in logged:
                    stored_id = stored_id or self._stored_id(unit_id)
                    exposures.append(a.exposure(stored_id, now, trace.trace_id, trace.span_id))
                    keys.append(key)
            results.append(answers)
        if exposures:
            if self._exposures.submit(exposures):
                logged.update(keys)
            else:
                log.warning("exposure queue full: %d exposures dropped", len(exposures))
        return results

    def track(self, item: TrackInput, trace: TraceRef = NO_TRACE) -> Event:
        return self.track_batch([item], trace, single=True)[0]

    def track_batch(
        self, items: Sequence[TrackInput], trace: TraceRef = NO_TRACE, *, single: bool = False
    ) -> list[Event]:
        if not single:
            check_batch(len(items), "events")
        now = self._clock.now()
        events = [
            self._event(item, now, trace, "" if single else f"events[{i}].")
            for i, item in enumerate(items)
        ]
        if self._stored_id is not _identity:
            events = [e._replace(unit_id=self._stored_id(e.unit_id)) for e in events]
        if not self._events.submit(events):
            raise StoreUnavailableError(
                "the event queue is full; retry with the same event_id shortly"
            )
        return events

    @staticmethod
    def _event(item: TrackInput, now: datetime, trace: TraceRef, prefix: str) -> Event:
        check_unit_id(item.unit_id, f"{prefix}unit_id")
        check_metric(item.metric, f"{prefix}metric")
        value = check_value(item.value, f"{prefix}value")
        occurred_at = now if item.occurred_at is None else item.occurred_at
        if occurred_at.tzinfo is None:
            raise ValidationError(f"{prefix}occurred_at", "must carry a time zone")
        if occurred_at - now > MAX_FUTURE_SKEW:
            raise ValidationError(
                f"{prefix}occurred_at",
                f"is more than {MAX_FUTURE_SKEW} in the future ({occurred_at.isoformat()}); "
                "check the client's clock",
            )
        event_id = (
            check_event_id(item.event_id, f"{prefix}event_id")
            if item.event_id
            else (os.urandom(16).hex())
        )
        return Event(
            event_id, item.unit_id, item.metric, value, occurred_at, trace.trace_id, trace.span_id
        )


def _identity(unit_id: str) -> str:
    return unit_id


def _check_request(request: UnitRequest, index: int | None = None) -> None:
    """Check one unit; ``index`` (its place in a batch) only names the field in an error."""
    unit_id = request.unit_id
    # The common case (printable ASCII, short enough) passes without building a field name.
    if not (
        type(unit_id) is str
        and 0 < len(unit_id) <= MAX_UNIT_ID_BYTES
        and unit_id.isascii()
        and unit_id.isprintable()
    ):
        check_unit_id(unit_id, _field(index, "unit_id"))
    if request.attributes:
        check_attributes(request.attributes, _field(index, "attributes"))
    keys = request.experiment_keys
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


class ApplyOutcome(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class ApplyResult:
    record: ExperimentRecord
    outcome: ApplyOutcome
    changed: tuple[str, ...] = ()


# What a running (or paused) experiment must keep: changing any of these would move units between
# arms or change who is in the experiment, and mix two experiments in one analysis.
IMMUTABLE_WHEN_STARTED = ("arms", "salt", "hash_version", "model", "layer", "holdout", "targeting")
# Policy knobs that change neither the hypotheses nor the error rates of a started experiment.
MUTABLE_POLICY_WHEN_STARTED = (
    "look_interval", "max_duration", "min_duration", "ramp", "ramp_step", "webhook",
)  # fmt: skip
# A concluded experiment is history: only its description may still be edited.
MUTABLE_WHEN_CONCLUDED = ("name", "description")


class ExperimentService:
    """Manage experiments; every change is audited with who made it."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def list(self) -> list[ExperimentRecord]:
        with self._store.transaction() as tx:
            return tx.experiments.list()

    def get(self, key: str) -> ExperimentRecord:
        with self._store.transaction() as tx:
            return tx.experiments.get(key)

    def exposure_counts(self, key: str) -> dict[str, int]:
        """Units exposed per arm (first exposures in the store)."""
        with self._store.transaction() as tx:
            return tx.exposures.counts(key)

    def history(self, key: str) -> builtins.list[DecisionRecord]:
        with self._store.transaction() as tx:
            tx.experiments.get(key)
            return tx.decisions.list(key)

    def apply(
        self,
        experiment: Experiment,
        *,
        actor: str,
        policy: Mapping[str, Any] | None = None,
        start: bool = False,
    ) -> ApplyResult:
        """Create or update an experiment from its declaration (idempotent)."""
        now = self._clock.now()
        with self._store.transaction() as tx:
            current = tx.experiments.find(experiment.key)
            others = [r.experiment for r in tx.experiments.list() if r.key != experiment.key]
            if current is None:
                status = ExperimentStatus.RUNNING if start else ExperimentStatus.DRAFT
                new = replace(experiment, status=status, rollout_arm=None)
                validate_catalog([*others, new])
                record = tx.experiments.save(
                    ExperimentRecord(
                        new,
                        revision=0,
                        created_at=now,
                        updated_at=now,
                        started_at=now if start else None,
                        policy=policy,
                    ),
                    expected_revision=None,
                )
                self._register_models(tx, new, now)
                self._audit(tx, record, "create" if not start else "create+start", actor, now)
                return ApplyResult(record, ApplyOutcome.CREATED)
            old = current.experiment
            new = replace(experiment, status=old.status, rollout_arm=old.rollout_arm)
            changed = _changed_fields(old, new)
            changed += [f"policy.{k}" for k in _changed_policy(current.policy, policy)]
            if changed:
                _check_change_allowed(old, changed)
                validate_catalog([*others, new])
                record = tx.experiments.save(
                    replace(current, experiment=new, updated_at=now, policy=policy),
                    expected_revision=current.revision,
                )
                self._register_models(tx, new, now)
                self._audit(
                    tx, record, "update", actor, now, reason=f"changed: {', '.join(changed)}"
                )
            else:
                record = current
            outcome = ApplyOutcome.UPDATED if changed else ApplyOutcome.UNCHANGED
        if start and record.experiment.status is not ExperimentStatus.RUNNING:
            record = self.start(experiment.key, actor=actor)
        return ApplyResult(record, outcome, tuple(changed))

    def start(self, key: str, *, actor: str) -> ExperimentRecord:
        """Start a draft or resume a paused experiment."""
        return self._set_status(key, ExperimentStatus.RUNNING, actor)

    def pause(self, key: str, *, actor: str) -> ExperimentRecord:
        return self._set_status(key, ExperimentStatus.PAUSED, actor)

    def _set_status(self, key: str, status: ExperimentStatus, actor: str) -> ExperimentRecord:
        now = self._clock.now()
        with self._store.transaction() as tx:
            current = tx.experiments.get(key)
            old = current.experiment.status
            if old is status:
                return current
            if old is ExperimentStatus.CONCLUDED:
                raise ConflictError(
                    f"experiment {key!r} is concluded (rollout arm "
                    f"{current.experiment.rollout_arm!r}); apply a new experiment to test again"
                )
            if status is ExperimentStatus.PAUSED and old is not ExperimentStatus.RUNNING:
                raise ConflictError(f"experiment {key!r} is {old}, only a running one can pause")
            record = tx.experiments.save(
                replace(
                    current,
                    experiment=replace(current.experiment, status=status),
                    updated_at=now,
                    started_at=current.started_at
                    or (now if status is ExperimentStatus.RUNNING else None),
                ),
                expected_revision=current.revision,
            )
            action = {
                (ExperimentStatus.DRAFT, ExperimentStatus.RUNNING): "start",
                (ExperimentStatus.PAUSED, ExperimentStatus.RUNNING): "resume",
            }.get((old, status), str(status))
            self._audit(
                tx, record, "pause" if status is ExperimentStatus.PAUSED else action, actor, now
            )
            return record

    @staticmethod
    def _register_models(tx: Any, experiment: Experiment, now: datetime) -> None:
        for arm in experiment.arms:
            tx.models.register(
                experiment.model, arm.model_version, now=now, experiment_key=experiment.key
            )
        if tx.models.live(experiment.model) is None:
            # The control is what runs today: it stays live until a promotion says otherwise.
            tx.models.set_status(
                experiment.model, experiment.control.model_version, "live", now=now
            )

    @staticmethod
    def _audit(
        tx: Any,
        record: ExperimentRecord,
        action: str,
        actor: str,
        now: datetime,
        reason: str = "",
    ) -> None:
        tx.decisions.add(
            DecisionRecord(
                experiment_key=record.key,
                action=action,
                reason=reason or f"{action} by {actor}",
                actor=actor,
                config_checksum=record.experiment.config_checksum,
                decided_at=now,
                snapshot={"revision": record.revision, "status": str(record.experiment.status)},
            )
        )


def _changed_fields(old: Experiment, new: Experiment) -> list[str]:
    a, b = experiment_to_dict(old), experiment_to_dict(new)
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _changed_policy(
    old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
) -> builtins.list[str]:
    if old == new:
        return []
    if old is None or new is None:
        return ["(all)"]
    return [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def _check_change_allowed(old: Experiment, changed: Sequence[str]) -> None:
    if old.status is ExperimentStatus.DRAFT:
        return
    if old.status is ExperimentStatus.CONCLUDED:
        refused = [f for f in changed if f not in MUTABLE_WHEN_CONCLUDED]
        if refused:
            raise ConflictError(
                f"experiment {old.key!r} is concluded; only {', '.join(MUTABLE_WHEN_CONCLUDED)} "
                f"may change (this file changes {', '.join(refused)}). Apply the new setup under "
                "a new experiment key."
            )
        return
    refused = [
        f
        for f in changed
        if f in IMMUTABLE_WHEN_STARTED
        or (
            f.startswith("policy.") and f.removeprefix("policy.") not in MUTABLE_POLICY_WHEN_STARTED
        )
    ]
    if refused:
        raise ConflictError(
            f"experiment {old.key!r} is {old.status}: its {', '.join(refused)} cannot change, "
            "because that would move units between arms, or change the hypotheses or error rates "
            "of an analysis in progress. Apply the new setup under a new experiment key (and "
            "pause this one), or keep these fields as they are. Coverage, overrides, name, "
            "description and the policy's look_interval, min/max_duration, ramp, ramp_step and "
            "webhook may change."
        )


@dataclass(frozen=True, slots=True)
class Erasure:
    exposures: int
    events: int
    overrides: int


@dataclass(frozen=True, slots=True)
class Pruning:
    cutoff: datetime
    exposures: int
    events: int


class PrivacyService:
    """Erasure of one unit (``abkit forget``) and retention (``abkit prune``), both audited.

    The audit records *what* was erased -- counts -- never the unit id or its pseudonym.
    """

    def __init__(
        self, store: Store, clock: Clock, pseudonymize: Callable[[str], str] | None = None
    ) -> None:
        self._store = store
        self._clock = clock
        self._pseudonymize = pseudonymize

    def forget(self, unit_id: str, *, actor: str) -> Erasure:
        """Erase every exposure and event of ``unit_id`` and remove it from overrides."""
        check_unit_id(unit_id)
        stored = [unit_id]
        if self._pseudonymize is not None:
            stored.append(self._pseudonymize(unit_id))
        now = self._clock.now()
        with self._store.transaction() as tx:
            exposures = tx.exposures.delete_units(stored)
            events = tx.events.delete_units(stored)
            overrides = 0
            for record in tx.experiments.list():
                current = dict(record.experiment.overrides)
                if unit_id not in current:
                    continue
                del current[unit_id]
                overrides += 1
                tx.experiments.save(
                    replace(
                        record,
                        experiment=replace(record.experiment, overrides=current),
                        updated_at=now,
                    ),
                    expected_revision=record.revision,
                )
            erasure = Erasure(exposures, events, overrides)
            tx.audit.add(
                AuditEntry(
                    "forget",
                    actor,
                    now,
                    {"exposures": exposures, "events": events, "overrides": overrides},
                )
            )
        return erasure

    def prune(self, older_than: timedelta, *, actor: str, include_running: bool = False) -> Pruning:
        """Erase events and exposures older than ``older_than``.

        Exposures of running experiments are kept, and events are not pruned while a running
        experiment started before the cutoff (its analysis would silently change), unless
        ``include_running``.
        """
        if older_than <= timedelta(0):
            raise ValidationError("--older-than", "must be a positive duration such as 180d")
        now = self._clock.now()
        cutoff = now - older_than
        with self._store.transaction() as tx:
            records = tx.experiments.list()
            running = [r for r in records if r.experiment.status is ExperimentStatus.RUNNING]
            early = [r.key for r in running if r.started_at is not None and r.started_at < cutoff]
            if early and not include_running:
                raise ConflictError(
                    f"running experiments started before {cutoff:%Y-%m-%d}: {', '.join(early)}; "
                    "pruning their data would change their analysis. Conclude them first, or "
                    "pass --include-running"
                )
            keys = [r.key for r in records if include_running or r not in running]
            exposures = tx.exposures.delete_before(cutoff, keys)
            events = tx.events.delete_before(cutoff)
            tx.audit.add(
                AuditEntry(
                    "prune",
                    actor,
                    now,
                    {
                        "cutoff": cutoff.isoformat(),
                        "exposures": exposures,
                        "events": events,
                        "include_running": include_running,
                    },
                )
            )
        return Pruning(cutoff, exposures, events)
