"""The in-memory twin of the SQL store, for fast tests of the services.

It keeps the same contract as :mod:`abkit.store.sql` -- the conformance suite runs against both --
including transactions: a unit of work holds the store's lock and works on copies, which replace
the originals only on commit.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from abkit.core.increments import DailySummaries, MetricState, Watermark
from abkit.core.metrics import Metric
from abkit.core.model import Event, Exposure, ModelStatus
from abkit.core.rows import decode_events, decode_exposures
from abkit.core.stats import Summary
from abkit.errors import ConflictError, NotFoundError, StoreUnavailableError
from abkit.ports import (
    AuditEntry,
    DecisionRecord,
    ExperimentRecord,
    ModelVersion,
    OutboxItem,
)
from abkit.store.memory import analysis
from abkit.store.memory.maintained import MemoryMaintained


@dataclass
class _State:
    experiments: dict[str, ExperimentRecord] = field(default_factory=dict)
    holdouts: dict[str, float] = field(default_factory=dict)
    exposures: dict[tuple[str, str], Exposure] = field(default_factory=dict)
    events: dict[str, Event] = field(default_factory=dict)
    decisions: list[DecisionRecord] = field(default_factory=list)
    models: dict[tuple[str, str], ModelVersion] = field(default_factory=dict)
    audit: list[AuditEntry] = field(default_factory=list)
    # Ingestion numbers, as the SQL store's seq columns; maintained statistics by
    # (experiment, metric key).
    counters: dict[str, int] = field(default_factory=lambda: {"exposures": 0, "events": 0})
    exposure_seq: dict[tuple[str, str], int] = field(default_factory=dict)
    event_seq: dict[str, int] = field(default_factory=dict)
    maintained: dict[tuple[str, str], MetricState] = field(default_factory=dict)
    outbox: dict[int, OutboxItem] = field(default_factory=dict)
    outbox_ids: int = 0

    def copy(self) -> _State:
        return _State(
            dict(self.experiments),
            dict(self.holdouts),
            dict(self.exposures),
            dict(self.events),
            list(self.decisions),
            dict(self.models),
            list(self.audit),
            dict(self.counters),
            dict(self.exposure_seq),
            dict(self.event_seq),
            dict(self.maintained),
            dict(self.outbox),
            self.outbox_ids,
        )

    def number(self, kind: str) -> int:
        self.counters[kind] += 1
        return self.counters[kind]


class MemoryExperiments:
    def __init__(self, state: _State) -> None:
        self._s = state

    def find(self, key: str) -> ExperimentRecord | None:
        return self._s.experiments.get(key)

    def get(self, key: str) -> ExperimentRecord:
        record = self.find(key)
        if record is None:
            raise NotFoundError(f"experiment {key!r} does not exist")
        return record

    def list(self) -> list[ExperimentRecord]:
        return [self._s.experiments[k] for k in sorted(self._s.experiments)]

    def revisions(self) -> builtins.list[tuple[str, int]]:
        return [(k, self._s.experiments[k].revision) for k in sorted(self._s.experiments)]

    def save(self, record: ExperimentRecord, *, expected_revision: int | None) -> ExperimentRecord:
        key = record.experiment.key
        current = self._s.experiments.get(key)
        if expected_revision is None and current is not None:
            raise ConflictError(f"experiment {key!r} already exists; apply it again to update it")
        if expected_revision is not None and (
            current is None or current.revision != expected_revision
        ):
            raise ConflictError(
                f"experiment {key!r} was changed concurrently (expected revision "
                f"{expected_revision}); reload it and try again"
            )
        holdout = record.experiment.holdout
        if holdout is not None:
            stored = self._s.holdouts.setdefault(holdout.key, holdout.fraction)
            if stored != holdout.fraction:
                raise ConflictError(
                    f"holdout {holdout.key!r} already holds out {stored:g} of units; use that "
                    f"fraction or a new holdout key (this experiment asks {holdout.fraction:g})"
                )
        saved = replace(record, revision=1 if expected_revision is None else expected_revision + 1)
        self._s.experiments[key] = saved
        return saved


class MemoryExposures:
    def __init__(self, state: _State) -> None:
        self._s = state

    def add(self, exposures: Sequence[Exposure]) -> int:
        new = 0
        for e in sorted(exposures, key=lambda x: x.exposed_at):  # the earliest is kept
            if (e.experiment_key, e.unit_id) not in self._s.exposures:
                self._s.exposures[(e.experiment_key, e.unit_id)] = e
                self._s.exposure_seq[(e.experiment_key, e.unit_id)] = self._s.number("exposures")
                new += 1
        return new

    def add_text(self, text: str, rows: int) -> int:
        return self.add(decode_exposures(text)) if rows else 0

    def get(self, experiment_key: str, unit_id: str) -> Exposure | None:
        return self._s.exposures.get((experiment_key, unit_id))

    def counts(self, experiment_key: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for (key, _unit), e in self._s.exposures.items():
            if key == experiment_key:
                counts[e.arm_key] = counts.get(e.arm_key, 0) + 1
        return counts

    def delete_units(self, unit_ids: Sequence[str]) -> int:
        doomed = [k for k in self._s.exposures if k[1] in set(unit_ids)]
        for k in doomed:
            del self._s.exposures[k]
        return len(doomed)

    def delete_before(self, cutoff: datetime, experiment_keys: Sequence[str]) -> int:
        keys = set(experiment_keys)
        doomed = [k for k, e in self._s.exposures.items() if k[0] in keys and e.exposed_at < cutoff]
        for k in doomed:
            del self._s.exposures[k]
        return len(doomed)


class MemoryEvents:
    def __init__(self, state: _State) -> None:
        self._s = state

    def add(self, events: Sequence[Event]) -> int:
        new = 0
        for e in events:
            if e.event_id not in self._s.events:
                self._s.events[e.event_id] = e
                self._s.event_seq[e.event_id] = self._s.number("events")
                new += 1
        return new

    def add_text(self, text: str, rows: int) -> int:
        return self.add(decode_events(text)) if rows else 0

    def get(self, event_id: str) -> Event | None:
        return self._s.events.get(event_id)

    def count(self, metric: str | None = None) -> int:
        if metric is None:
            return len(self._s.events)
        return sum(1 for e in self._s.events.values() if e.metric == metric)

    def delete_units(self, unit_ids: Sequence[str]) -> int:
        doomed = [k for k, e in self._s.events.items() if e.unit_id in set(unit_ids)]
        for k in doomed:
            del self._s.events[k]
        return len(doomed)

    def delete_before(self, cutoff: datetime) -> int:
        doomed = [k for k, e in self._s.events.items() if e.occurred_at < cutoff]
        for k in doomed:
            del self._s.events[k]
        return len(doomed)


class MemoryAudit:
    def __init__(self, state: _State) -> None:
        self._s = state

    def add(self, entry: AuditEntry) -> AuditEntry:
        stored = replace(entry, id=len(self._s.audit) + 1)
        self._s.audit.append(stored)
        return stored

    def list(self) -> builtins.list[AuditEntry]:
        return sorted(self._s.audit, key=lambda a: (a.at, a.id or 0))


class MemoryDecisions:
    def __init__(self, state: _State) -> None:
        self._s = state

    def add(self, decision: DecisionRecord) -> DecisionRecord:
        if decision.experiment_key not in self._s.experiments:
            raise NotFoundError(f"experiment {decision.experiment_key!r} does not exist")
        if decision.look is not None and any(
            d.experiment_key == decision.experiment_key and d.look == decision.look
            for d in self._s.decisions
        ):
            raise ConflictError(
                f"look {decision.look} of {decision.experiment_key!r} is already recorded"
            )
        stored = replace(decision, id=len(self._s.decisions) + 1)
        self._s.decisions.append(stored)
        return stored

    def list(self, experiment_key: str) -> builtins.list[DecisionRecord]:
        found = [d for d in self._s.decisions if d.experiment_key == experiment_key]
        return sorted(found, key=lambda d: (d.decided_at, d.id or 0))

    def last_look(self, experiment_key: str) -> DecisionRecord | None:
        looks = [
            d
            for d in self._s.decisions
            if d.experiment_key == experiment_key and d.look is not None
        ]
        return max(looks, key=lambda d: d.look or 0, default=None)


class MemoryModels:
    def __init__(self, state: _State) -> None:
        self._s = state

    def register(
        self, model: str, version: str, *, now: datetime, experiment_key: str | None = None
    ) -> ModelVersion:
        return self._s.models.setdefault(
            (model, version),
            ModelVersion(model, version, ModelStatus.CANDIDATE, now, now, experiment_key),
        )

    def set_status(
        self, model: str, version: str, status: ModelStatus, *, now: datetime
    ) -> ModelVersion:
        status = ModelStatus(status)  # as the SQL store, which keeps the value
        current = self._s.models.get((model, version))
        if current is None:
            raise NotFoundError(f"model {model!r} has no version {version!r} in the registry")
        if status is ModelStatus.LIVE:
            other = self.live(model)
            if other is not None and other.version != version:
                raise ConflictError(f"model {model!r} already has a live version {other.version!r}")
        updated = replace(current, status=status, updated_at=now)
        self._s.models[(model, version)] = updated
        return updated

    def versions(self, model: str | None = None) -> list[ModelVersion]:
        found = [v for v in self._s.models.values() if model is None or v.model == model]
        return sorted(found, key=lambda v: (v.model, v.created_at, v.version))

    def live(self, model: str) -> ModelVersion | None:
        return next(
            (
                v
                for v in self._s.models.values()
                if v.model == model and v.status is ModelStatus.LIVE
            ),
            None,
        )


class MemoryOutbox:
    def __init__(self, state: _State) -> None:
        self._s = state

    def add(self, item: OutboxItem) -> OutboxItem:
        if item.experiment_key not in self._s.experiments:
            raise NotFoundError(f"experiment {item.experiment_key!r} does not exist")
        self._s.outbox_ids += 1
        stored = replace(item, id=self._s.outbox_ids)
        self._s.outbox[self._s.outbox_ids] = stored
        return stored

    def pending(self, experiment_key: str | None = None) -> builtins.list[OutboxItem]:
        return [
            self._s.outbox[i]
            for i in sorted(self._s.outbox)
            if experiment_key is None or self._s.outbox[i].experiment_key == experiment_key
        ]

    def claim(
        self, item_id: int, *, owner: str, now: datetime, until: datetime
    ) -> OutboxItem | None:
        item = self._s.outbox.get(item_id)
        if item is None or item.next_attempt_at > now:
            return None
        if item.claimed_until is not None and item.claimed_until > now:
            return None
        claimed = replace(item, claimed_by=owner, claimed_until=until, attempts=item.attempts + 1)
        self._s.outbox[item_id] = claimed
        return claimed

    def observe(self, item_id: int, *, owner: str, observed: Mapping[str, Any]) -> bool:
        item = self._held(item_id, owner)
        if item is None or item.observed is not None:
            return False
        self._s.outbox[item_id] = replace(item, observed=dict(observed))
        return True

    def release(
        self, item_id: int, *, owner: str, error: str, retry_at: datetime, now: datetime
    ) -> bool:
        item = self._held(item_id, owner)
        if item is None:
            return False
        self._s.outbox[item_id] = replace(
            item, claimed_by=None, claimed_until=None, last_error=error, next_attempt_at=retry_at
        )
        return True

    def remove(self, item_id: int, *, owner: str) -> bool:
        if self._held(item_id, owner) is None:
            return False
        del self._s.outbox[item_id]
        return True

    def _held(self, item_id: int, owner: str) -> OutboxItem | None:
        item = self._s.outbox.get(item_id)
        return item if item is not None and item.claimed_by == owner else None


class MemoryAnalysis:
    def __init__(self, state: _State) -> None:
        self._s = state

    def _inputs(
        self, experiment_key: str, upto: Watermark | None
    ) -> tuple[list[Exposure], dict[str, list[Event]]]:
        upto = upto or Watermark(self._s.counters["exposures"], self._s.counters["events"])
        exposures = [
            e
            for at, e in self._s.exposures.items()
            if at[0] == experiment_key and self._s.exposure_seq[at] <= upto.exposures
        ]
        by_unit: dict[str, list[Event]] = {}
        for event in self._s.events.values():
            if self._s.event_seq[event.event_id] <= upto.events:
                by_unit.setdefault(event.unit_id, []).append(event)
        return exposures, by_unit

    def summaries(
        self,
        experiment_key: str,
        metrics: Sequence[Metric],
        *,
        as_of: datetime | None = None,
        upto: Watermark | None = None,
    ) -> dict[str, dict[str, Summary]]:
        exposures, by_unit = self._inputs(experiment_key, upto)
        return analysis.summaries(exposures, by_unit, metrics, as_of)

    def daily(
        self, experiment_key: str, metric: Metric, *, upto: Watermark | None = None
    ) -> builtins.list[DailySummaries]:
        exposures, by_unit = self._inputs(experiment_key, upto)
        return analysis.daily(exposures, by_unit, metric) if exposures else []


class MemoryTransaction:
    def __init__(self, state: _State) -> None:
        self.state = state
        self.analysis = MemoryAnalysis(state)
        self.maintained = MemoryMaintained(state)
        self.experiments = MemoryExperiments(state)
        self.exposures = MemoryExposures(state)
        self.events = MemoryEvents(state)
        self.decisions = MemoryDecisions(state)
        self.models = MemoryModels(state)
        self.audit = MemoryAudit(state)
        self.outbox = MemoryOutbox(state)


class MemoryStore:
    """In-memory store. ``available = False`` simulates an outage (every call fails)."""

    def __init__(self) -> None:
        self._state = _State()
        self._lock = threading.RLock()
        self.available = True

    @contextmanager
    def transaction(self) -> Iterator[MemoryTransaction]:
        self.ping()
        with self._lock:
            working = self._state.copy()
            yield MemoryTransaction(working)
            self._state = working

    def ping(self) -> None:
        if not self.available:
            raise StoreUnavailableError("the in-memory store is marked unavailable")

    def close(self) -> None:
        pass
