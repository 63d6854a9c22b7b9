"""The interfaces the services need, as ``typing.Protocol`` s.

Two implementations of the store exist: :mod:`abkit.store.sql` (SQLite, PostgreSQL) and the
in-memory twin :mod:`abkit.store.memory`. One conformance suite (``tests/integration/
test_store_conformance.py``) runs against all of them, so the twin cannot drift from the real
thing.

All store access goes through a unit of work: ``with store.transaction() as tx:`` gives
repositories bound to one database transaction, committed on success and rolled back on any
exception. Revisions make experiment updates optimistic: a save that expects revision 3 fails
with :class:`~abkit.errors.ConflictError` if someone else saved revision 4 first.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from abkit.core.metrics import Metric
from abkit.core.model import Event, Experiment, Exposure, ModelStatus
from abkit.core.policy import Policy

if TYPE_CHECKING:  # the stats package imports scipy; the ports only need its types
    from abkit.core.increments import DailySummaries, DayChange, MetricState, Watermark
    from abkit.core.stats import Summary


@dataclass(frozen=True, slots=True)
class ExperimentRecord:
    """An experiment as stored: the config plus its bookkeeping."""

    experiment: Experiment
    revision: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    concluded_at: datetime | None = None
    policy: Policy | None = None
    policy_error: str | None = None
    """Why the stored policy document could not be read (then ``policy`` is None): written by
    another version, or edited by hand. The worker records a hold saying so."""

    @property
    def key(self) -> str:
        return self.experiment.key


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One entry of the audit trail (automatic decisions and manual actions alike).

    ``snapshot`` is the stored JSON document; :func:`abkit.core.snapshot.read_entry` reads it
    into its typed form.
    """

    experiment_key: str
    action: str
    reason: str
    actor: str
    config_checksum: str
    decided_at: datetime
    arm_key: str | None = None
    snapshot: Mapping[str, Any] = field(default_factory=dict)
    look: int | None = None
    id: int | None = None


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """A version of a model in the registry."""

    model: str
    version: str
    status: ModelStatus
    created_at: datetime
    updated_at: datetime
    experiment_key: str | None = None


class ExperimentRepository(Protocol):
    def find(self, key: str) -> ExperimentRecord | None: ...

    def get(self, key: str) -> ExperimentRecord:
        """The record, or :class:`~abkit.errors.NotFoundError`."""
        ...

    def list(self) -> list[ExperimentRecord]:
        """Every experiment, ordered by key."""
        ...

    def revisions(self) -> builtins.list[tuple[str, int]]:
        """``(key, revision)`` of every experiment, ordered by key: what changed, cheaply (a
        server polls it several times a second to notice a change)."""
        ...

    def save(self, record: ExperimentRecord, *, expected_revision: int | None) -> ExperimentRecord:
        """Create (``expected_revision=None``) or replace an experiment.

        Returns the stored record with ``revision`` advanced by one. Raises
        :class:`~abkit.errors.ConflictError` when the key exists on create, or when the stored
        revision is not ``expected_revision`` on update.
        """
        ...


class ExposureRepository(Protocol):
    def add(self, exposures: Sequence[Exposure]) -> int:
        """Insert first exposures; an (experiment, unit) already present is kept as it is.

        Within one call, the earliest ``exposed_at`` of a unit is the one kept.

        Returns how many rows were new.
        """
        ...

    def add_text(self, text: str, rows: int) -> int:
        """:meth:`add` for ``rows`` exposures encoded as :func:`abkit.core.rows.encode_exposures`
        text (what the journal and the stream carry); the same contract."""
        ...

    def get(self, experiment_key: str, unit_id: str) -> Exposure | None: ...

    def counts(self, experiment_key: str) -> dict[str, int]:
        """Exposed units per arm."""
        ...

    def delete_units(self, unit_ids: Sequence[str]) -> int:
        """Erase every exposure of these stored unit ids (raw or pseudonymised); how many."""
        ...

    def delete_before(self, cutoff: datetime, experiment_keys: Sequence[str]) -> int:
        """Erase exposures older than ``cutoff`` of the given experiments; how many."""
        ...


class EventRepository(Protocol):
    def add(self, events: Sequence[Event]) -> int:
        """Insert events; an ``event_id`` already present is skipped. Returns how many were new."""
        ...

    def add_text(self, text: str, rows: int) -> int:
        """:meth:`add` for ``rows`` events encoded as :func:`abkit.core.rows.encode_events`."""
        ...

    def get(self, event_id: str) -> Event | None: ...

    def count(self, metric: str | None = None) -> int: ...

    def delete_units(self, unit_ids: Sequence[str]) -> int:
        """Erase every event of these stored unit ids; how many."""
        ...

    def delete_before(self, cutoff: datetime) -> int:
        """Erase events that occurred before ``cutoff``; how many."""
        ...


class DecisionRepository(Protocol):
    def add(self, decision: DecisionRecord) -> DecisionRecord:
        """Append to the audit trail; returns the record with its id.

        Raises :class:`~abkit.errors.ConflictError` when that look of the experiment is
        already recorded (another worker got there first).
        """
        ...

    def list(self, experiment_key: str) -> list[DecisionRecord]:
        """The experiment's decisions, oldest first."""
        ...

    def last_look(self, experiment_key: str) -> DecisionRecord | None:
        """The worker's most recent look (the highest look number), if any."""
        ...


class ModelRegistry(Protocol):
    def register(
        self, model: str, version: str, *, now: datetime, experiment_key: str | None = None
    ) -> ModelVersion:
        """Add a version as a candidate if it is unknown; return it as stored."""
        ...

    def set_status(
        self, model: str, version: str, status: ModelStatus, *, now: datetime
    ) -> ModelVersion: ...

    def versions(self, model: str | None = None) -> list[ModelVersion]: ...

    def live(self, model: str) -> ModelVersion | None: ...


class AnalysisRepository(Protocol):
    """Sufficient statistics computed where the data lives (docs/design.md, "the data contract"),
    from every row: the full recomputation."""

    def summaries(
        self,
        experiment_key: str,
        metrics: Sequence[Metric],
        *,
        as_of: datetime | None = None,
        upto: Watermark | None = None,
    ) -> dict[str, dict[str, Summary]]:
        """``{metric name: {arm key: summary}}`` over units exposed (and events) before ``as_of``
        and numbered up to ``upto`` (ingestion order).

        Arms without exposed units are absent.
        """
        ...

    def daily(
        self, experiment_key: str, metric: Metric, *, upto: Watermark | None = None
    ) -> list[DailySummaries]:
        """Cumulative summaries at the end of each UTC day with exposures or events."""
        ...


class MaintainedStatistics(Protocol):
    """Sufficient statistics kept up to date look after look (:mod:`abkit.core.increments`)."""

    def watermark(self) -> Watermark:
        """How far ingestion has committed: every exposure and event numbered at or below it is
        stored or rolled back for good. May wait for ingestion in flight; call it in a
        transaction of its own, before reading."""
        ...

    def lock(self, experiment_key: str) -> None:
        """Wait for other refreshes of this experiment until the transaction ends."""
        ...

    def load(self, experiment_key: str) -> dict[str, MetricState]:
        """The experiment's states, by metric key."""
        ...

    def changes(
        self,
        experiment_key: str,
        metrics: Sequence[Metric],
        before: Watermark,
        after: Watermark,
        *,
        units: Sequence[str] | None = None,
        days: bool = True,
    ) -> dict[str, list[DayChange]]:
        """``{metric name: changes}``: what the units exposed, or with events, between ``before``
        and ``after`` (or the given ``units``) contribute at ``after`` minus at ``before``: per
        day, or (``days`` false, not from an empty ``before``) one undated row per arm."""
        ...

    def save(
        self,
        experiment_key: str,
        metric: Metric,
        changes: Sequence[DayChange],
        *,
        expected_version: int | None,
        watermark: Watermark,
        dated: Watermark,
        now: datetime,
        drop_undated: bool = False,
    ) -> None:
        """Add ``changes`` (``drop_undated``: after deleting the undated rows) and set the
        totals' and the per-day rows' watermarks if the state is at ``expected_version``
        (``None``: no state yet); otherwise :class:`~abkit.errors.ConflictError`."""
        ...

    def erase_units(self, unit_ids: Sequence[str], *, now: datetime) -> int:
        """Subtract these units from every state that counts them (before deleting them)."""
        ...

    def invalidate_before(self, cutoff: datetime) -> int:
        """Drop the states that may count rows older than ``cutoff`` (before pruning them)."""
        ...

    def drop(self, experiment_key: str) -> None:
        """Drop the experiment's states; the next look computes them from the start."""
        ...


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A change to an external system that a decision makes, recorded in the decision's own
    transaction and carried out afterwards, with retries, by a dispatcher
    (:mod:`abkit.services.registry`); the row is deleted once the change is done.

    ``key`` orders the items: those with the same key (the registered model) are carried out
    one at a time, oldest first. ``observed`` is what the dispatcher saw in the external system
    before its first write, stored once, so a retry computes the same writes.
    """

    experiment_key: str
    decision_id: int
    kind: str
    key: str
    intent: Mapping[str, Any]
    created_at: datetime
    next_attempt_at: datetime
    attempts: int = 0
    last_error: str | None = None
    observed: Mapping[str, Any] | None = None
    claimed_by: str | None = None
    claimed_until: datetime | None = None
    id: int | None = None


class OutboxRepository(Protocol):
    def add(self, item: OutboxItem) -> OutboxItem:
        """Record a change to carry out; returns it with its id (ids grow with time)."""
        ...

    def pending(self, experiment_key: str | None = None) -> list[OutboxItem]:
        """Every change not yet done (of one experiment), oldest first."""
        ...

    def claim(
        self, item_id: int, *, owner: str, now: datetime, until: datetime
    ) -> OutboxItem | None:
        """Take the item for ``owner`` until ``until`` and count an attempt -- unless it is gone,
        not due (``next_attempt_at`` after ``now``) or claimed by someone else until after
        ``now``. The claimed item, or None."""
        ...

    def observe(self, item_id: int, *, owner: str, observed: Mapping[str, Any]) -> bool:
        """Store what the external system looked like before any write, once; False when
        ``owner`` no longer holds the claim (or it was stored already)."""
        ...

    def release(
        self, item_id: int, *, owner: str, error: str, retry_at: datetime, now: datetime
    ) -> bool:
        """A failed attempt: give up the claim, keep ``error``, try again at ``retry_at``.
        False when ``owner`` no longer holds the claim."""
        ...

    def remove(self, item_id: int, *, owner: str) -> bool:
        """The change is done: delete it. False when ``owner`` no longer holds the claim."""
        ...


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """An operational action that is not about one experiment (erasure, retention)."""

    action: str
    actor: str
    at: datetime
    detail: Mapping[str, Any] = field(default_factory=dict)
    id: int | None = None


class AuditLog(Protocol):
    def add(self, entry: AuditEntry) -> AuditEntry: ...

    def list(self) -> list[AuditEntry]:
        """Oldest first."""
        ...


class Transaction(Protocol):
    """Repositories bound to one transaction."""

    @property
    def experiments(self) -> ExperimentRepository: ...

    @property
    def exposures(self) -> ExposureRepository: ...

    @property
    def events(self) -> EventRepository: ...

    @property
    def decisions(self) -> DecisionRepository: ...

    @property
    def models(self) -> ModelRegistry: ...

    @property
    def analysis(self) -> AnalysisRepository: ...

    @property
    def maintained(self) -> MaintainedStatistics: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def outbox(self) -> OutboxRepository: ...


class Store(Protocol):
    def transaction(self) -> AbstractContextManager[Transaction]:
        """A unit of work: commit on success, roll back on exception.

        Raises :class:`~abkit.errors.StoreUnavailableError` when the database cannot be reached.
        """
        ...

    def ping(self) -> None:
        """Raise :class:`~abkit.errors.StoreUnavailableError` unless the store answers."""
        ...

    def close(self) -> None: ...


class Commit(Protocol):
    """One group commit: the rows of every receipt it carries become durable (or fail) at once."""

    @property
    def durable(self) -> bool: ...

    def finished(self) -> bool: ...

    def on_done(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the commit has finished, from whichever thread finishes it."""
        ...


class Receipt(Protocol):
    @property
    def group(self) -> Commit: ...

    def hurry(self) -> None:
        """Somebody waits: commit now rather than at the next interval."""
        ...

    def wait(self, timeout: float) -> bool:
        """Block until the recorded rows are durable; False on timeout or failure."""
        ...


class Recorder(Protocol):
    """Where accepted exposures (or events) go: the local journal, or the stream."""

    def record(self, text: str, rows: int) -> Receipt:
        """Take ``rows`` rows encoded as :mod:`abkit.core.rows` text, all or none. Raises
        :class:`~abkit.errors.StoreUnavailableError` when they cannot be kept (full, closing,
        failed); the receipt tells when they are durable."""
        ...


class ExternalModelRegistry(Protocol):
    """A model registry outside abkit whose aliases follow abkit's decisions (MLflow's:
    :mod:`abkit.infra.mlflow_registry`; its twin: :mod:`abkit.infra.registry_memory`).

    Versions are named as in ``models:/<model>/<version>``. Every write is idempotent. Raises
    :class:`~abkit.errors.RegistryUnavailableError` when the registry cannot be reached (or
    answers with an error worth retrying) and :class:`~abkit.errors.NotFoundError` when a write
    names a model or version it does not have.
    """

    @property
    def location(self) -> str:
        """Where it is, for messages (``MLflow at http://mlflow:5000``)."""
        ...

    def version_exists(self, model: str, version: str) -> bool: ...

    def aliases(self, model: str) -> dict[str, str]:
        """Every alias of the model and the version it points to (empty for an unknown model)."""
        ...

    def set_alias(self, model: str, alias: str, version: str) -> None: ...

    def delete_alias(self, model: str, alias: str) -> None:
        """Remove the alias (nothing happens if it is not set)."""
        ...

    def set_tag(self, model: str, version: str, key: str, value: str) -> None: ...


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...
