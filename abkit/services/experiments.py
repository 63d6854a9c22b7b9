"""The experiments use case: apply (idempotent, refusing to change what a running experiment
must keep; one declaration, or a whole directory of them in one transaction), list, show, start,
pause; every change is written to the audit trail."""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from abkit.core.model import Experiment, ExperimentStatus, ModelStatus, validate_catalog
from abkit.core.policy import Policy
from abkit.core.policy_document import policy_to_dict
from abkit.core.snapshot import StatusChange
from abkit.core.spec import experiment_to_dict
from abkit.errors import ConflictError, ValidationError
from abkit.ports import Clock, DecisionRecord, ExperimentRecord, Store, Transaction
from abkit.services.registry import VersionChecker


class ApplyOutcome(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class ApplyRequest:
    """One declaration to apply: the experiment, its policy, and where it came from (a file
    name), which every error about it names."""

    experiment: Experiment
    policy: Policy | None = None
    source: str = ""


@dataclass(frozen=True, slots=True)
class FieldChange:
    """A field a re-apply changes, in its document form before and after: a top-level field of
    the experiment (``coverage``, ``arms``), ``policy.<field>``, or ``policy`` when the policy
    is added or removed as a whole."""

    field: str
    old: Any
    new: Any


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What applying one declaration did (or, in a dry run, would do).

    ``status_before`` is the stored status before (``None``: created); ``record`` is the
    experiment after, with its new status (started by ``start``).
    """

    record: ExperimentRecord
    outcome: ApplyOutcome
    changes: tuple[FieldChange, ...] = ()
    status_before: ExperimentStatus | None = None
    source: str = ""

    @property
    def changed(self) -> tuple[str, ...]:
        """The names of the changed fields."""
        return tuple(c.field for c in self.changes)


# What a running (or paused) experiment must keep: changing any of these would move units between
# arms or change who is in the experiment, and mix two experiments in one analysis.
IMMUTABLE_WHEN_STARTED = ("arms", "salt", "hash_version", "model", "layer", "holdout", "targeting")
# Policy knobs that change neither the hypotheses nor the error rates of a started experiment.
MUTABLE_POLICY_WHEN_STARTED = (
    "look_interval", "max_duration", "min_duration", "ramp", "ramp_step", "webhook",
)  # fmt: skip
# A concluded experiment is history: only its description may still be edited.
MUTABLE_WHEN_CONCLUDED = ("name", "description")


@dataclass(frozen=True, slots=True)
class _Plan:
    """One declaration checked against the store: what applying it writes."""

    request: ApplyRequest
    current: ExperimentRecord | None
    experiment: Experiment
    """The declared config with the stored status and rollout arm (a new one: its status)."""
    changes: tuple[FieldChange, ...]
    start: bool
    """Start (a draft) or resume (a paused experiment) after saving it."""

    @property
    def after(self) -> Experiment:
        """The experiment as it will be, status included."""
        if self.start:
            return replace(self.experiment, status=ExperimentStatus.RUNNING)
        return self.experiment

    def result(self, record: ExperimentRecord) -> ApplyResult:
        if self.current is None:
            outcome = ApplyOutcome.CREATED
        else:
            outcome = ApplyOutcome.UPDATED if self.changes else ApplyOutcome.UNCHANGED
        before = self.current.experiment.status if self.current is not None else None
        return ApplyResult(record, outcome, self.changes, before, self.request.source)

    def preview(self, now: datetime) -> ApplyResult:
        """The result of a dry run: the record as it would be stored (its revision unchanged)."""
        if self.current is None:
            record = ExperimentRecord(
                self.after,
                revision=0,
                created_at=now,
                updated_at=now,
                started_at=now if self.start else None,
                policy=self.request.policy,
            )
            return self.result(record)
        policy = self.request.policy if self.changes else self.current.policy
        return self.result(replace(self.current, experiment=self.after, policy=policy))


class ExperimentService:
    """Manage experiments; every change is audited with who made it."""

    def __init__(
        self, store: Store, clock: Clock, *, check_versions: VersionChecker | None = None
    ) -> None:
        self._store = store
        self._clock = clock
        self._check_versions = check_versions

    def check_versions(self, requests: Sequence[ApplyRequest]) -> None:
        """With an external registry (MLflow): refuse arms naming versions it does not have
        (a ValidationError naming the file, the arm and the URI). Only new experiments and
        changed arms are checked, so a version deleted long after its experiment concluded
        does not block re-applying a directory."""
        if self._check_versions is None:
            return
        with self._store.transaction() as tx:
            stored = {r.experiment.key: tx.experiments.find(r.experiment.key) for r in requests}
        for request in requests:
            current = stored[request.experiment.key]
            if current is None or current.experiment.arms != request.experiment.arms:
                with _naming(request.source):
                    self._check_versions(request.experiment)

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

    def trail(self, key: str) -> tuple[ExperimentRecord, builtins.list[DecisionRecord]]:
        """The experiment and its audit trail, read together in one transaction (so the status
        and the last decision agree): what ``abkit wait`` polls."""
        with self._store.transaction() as tx:
            return tx.experiments.get(key), tx.decisions.list(key)

    def apply(
        self,
        experiment: Experiment,
        *,
        actor: str,
        policy: Policy | None = None,
        start: bool = False,
    ) -> ApplyResult:
        """Create or update an experiment from its declaration (idempotent)."""
        return self.apply_all([ApplyRequest(experiment, policy)], actor=actor, start=start)[0]

    def apply_all(
        self,
        requests: Sequence[ApplyRequest],
        *,
        actor: str,
        start: bool = False,
        dry_run: bool = False,
    ) -> builtins.list[ApplyResult]:
        """Create or update several experiments in one transaction: all of them, or none.

        Each declaration is checked as it would be alone (a started experiment keeps its arms,
        a concluded one only takes a new name or description), and the whole set against the
        catalog (unique keys, disjoint layer segments). The first refused declaration raises
        (:class:`~abkit.errors.ValidationError` or :class:`~abkit.errors.ConflictError`, naming
        its ``source`` and the field) and nothing is written. ``start`` starts new and draft
        experiments and resumes paused ones. ``dry_run`` checks everything and writes nothing:
        the results say what would change.
        """
        _check_unique_keys(requests)
        self.check_versions(requests)  # the registry is asked before the transaction
        now = self._clock.now()
        with self._store.transaction() as tx:
            plans = _plan_all(tx, requests, start=start)
            if dry_run:
                return [plan.preview(now) for plan in plans]
            return [self._write(tx, plan, actor, now) for plan in plans]

    def _write(self, tx: Transaction, plan: _Plan, actor: str, now: datetime) -> ApplyResult:
        if plan.current is None:
            record = tx.experiments.save(
                ExperimentRecord(
                    plan.after,
                    revision=0,
                    created_at=now,
                    updated_at=now,
                    started_at=now if plan.start else None,
                    policy=plan.request.policy,
                ),
                expected_revision=None,
            )
            self._register_models(tx, record.experiment, now)
            self._audit(tx, record, "create+start" if plan.start else "create", actor, now)
            return plan.result(record)
        record = plan.current
        if plan.changes:
            record = tx.experiments.save(
                replace(
                    record, experiment=plan.experiment, updated_at=now, policy=plan.request.policy
                ),
                expected_revision=record.revision,
            )
            self._register_models(tx, record.experiment, now)
            changed = ", ".join(c.field for c in plan.changes)
            self._audit(tx, record, "update", actor, now, reason=f"changed: {changed}")
        if plan.start:
            record = self._transition(tx, record, ExperimentStatus.RUNNING, actor, now)
        return plan.result(record)

    def start(self, key: str, *, actor: str) -> ExperimentRecord:
        """Start a draft or resume a paused experiment."""
        return self._set_status(key, ExperimentStatus.RUNNING, actor)

    def pause(self, key: str, *, actor: str) -> ExperimentRecord:
        return self._set_status(key, ExperimentStatus.PAUSED, actor)

    def _set_status(self, key: str, status: ExperimentStatus, actor: str) -> ExperimentRecord:
        now = self._clock.now()
        with self._store.transaction() as tx:
            return self._transition(tx, tx.experiments.get(key), status, actor, now)

    @classmethod
    def _transition(
        cls,
        tx: Transaction,
        current: ExperimentRecord,
        status: ExperimentStatus,
        actor: str,
        now: datetime,
    ) -> ExperimentRecord:
        """Move ``current`` to ``status`` (start, resume, pause) in ``tx``, audited."""
        old = current.experiment.status
        if old is status:
            return current
        if old is ExperimentStatus.CONCLUDED:
            raise ConflictError(_concluded(current))
        if status is ExperimentStatus.PAUSED and old is not ExperimentStatus.RUNNING:
            raise ConflictError(
                f"experiment {current.key!r} is {old}, only a running one can pause"
            )
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
        cls._audit(tx, record, "pause" if status is ExperimentStatus.PAUSED else action, actor, now)
        return record

    @staticmethod
    def _register_models(tx: Transaction, experiment: Experiment, now: datetime) -> None:
        for arm in experiment.arms:
            tx.models.register(
                experiment.model, arm.model_version, now=now, experiment_key=experiment.key
            )
        if tx.models.live(experiment.model) is None:
            # The control is what runs today: it stays live until a promotion says otherwise.
            tx.models.set_status(
                experiment.model, experiment.control.model_version, ModelStatus.LIVE, now=now
            )

    @staticmethod
    def _audit(
        tx: Transaction,
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
                snapshot=StatusChange(record.revision, record.experiment.status).to_dict(),
            )
        )


def _plan_all(tx: Transaction, requests: Sequence[ApplyRequest], *, start: bool) -> list[_Plan]:
    """Check every declaration against the store and the catalog they make together."""
    stored = {r.key: r for r in tx.experiments.list()}
    batch = {r.experiment.key for r in requests}
    catalog = [r.experiment for key, r in stored.items() if key not in batch]
    plans = []
    for request in requests:
        with _naming(request.source):
            plan = _plan(stored.get(request.experiment.key), request, start=start)
            catalog.append(plan.after)
            validate_catalog(catalog)  # a conflict is the fault of the declaration just added
        plans.append(plan)
    return plans


def _plan(current: ExperimentRecord | None, request: ApplyRequest, *, start: bool) -> _Plan:
    """What applying one declaration changes, refused if its experiment's state forbids it."""
    experiment = request.experiment
    if current is None:
        new = replace(experiment, status=ExperimentStatus.DRAFT, rollout_arm=None)
        return _Plan(request, None, new, (), start)
    old = current.experiment
    new = replace(experiment, status=old.status, rollout_arm=old.rollout_arm)
    changes = (*_field_changes(old, new), *_policy_changes(current.policy, request.policy))
    if changes:
        _check_change_allowed(old, [c.field for c in changes])
    starts = start and old.status is not ExperimentStatus.RUNNING
    if starts and old.status is ExperimentStatus.CONCLUDED:
        raise ConflictError(_concluded(current))
    return _Plan(request, current, new, changes, starts)


def _check_unique_keys(requests: Sequence[ApplyRequest]) -> None:
    seen: dict[str, str] = {}
    for request in requests:
        key = request.experiment.key
        if key in seen:
            first = seen[key] or "an earlier declaration"
            raise ValidationError(
                f"{request.source}: key" if request.source else "key",
                f"experiment {key!r} is also declared in {first}; declare each experiment once",
            )
        seen[key] = request.source


@contextmanager
def _naming(source: str) -> Iterator[None]:
    """Errors about one declaration say where it came from (its file)."""
    try:
        yield
    except ValidationError as exc:
        if not source:
            raise
        field = f"{source}: {exc.field}" if exc.field else source
        raise ValidationError(field, exc.message) from exc
    except ConflictError as exc:
        if not source:
            raise
        raise ConflictError(f"{source}: {exc}") from exc


def _concluded(record: ExperimentRecord) -> str:
    return (
        f"experiment {record.key!r} is concluded (rollout arm "
        f"{record.experiment.rollout_arm!r}); apply a new experiment to test again"
    )


def _field_changes(old: Experiment, new: Experiment) -> list[FieldChange]:
    a, b = experiment_to_dict(old), experiment_to_dict(new)
    return [
        FieldChange(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
    ]


def _policy_changes(old: Policy | None, new: Policy | None) -> builtins.list[FieldChange]:
    if old == new:
        return []
    a = policy_to_dict(old) if old is not None else None
    b = policy_to_dict(new) if new is not None else None
    if a is None or b is None:
        return [FieldChange("policy", a, b)]
    return [
        FieldChange(f"policy.{k}", a.get(k), b.get(k))
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


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
        or f == "policy"
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
