"""The experiments use case: apply (idempotent, refusing to change what a running experiment
must keep), list, show, start, pause; every change is written to the audit trail."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from abkit.core.model import Experiment, ExperimentStatus, ModelStatus, validate_catalog
from abkit.core.policy import Policy
from abkit.core.policy_document import policy_to_dict
from abkit.core.snapshot import StatusChange
from abkit.core.spec import experiment_to_dict
from abkit.errors import ConflictError
from abkit.ports import Clock, DecisionRecord, ExperimentRecord, Store, Transaction


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
        policy: Policy | None = None,
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


def _changed_fields(old: Experiment, new: Experiment) -> list[str]:
    a, b = experiment_to_dict(old), experiment_to_dict(new)
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _changed_policy(old: Policy | None, new: Policy | None) -> builtins.list[str]:
    if old == new:
        return []
    if old is None or new is None:
        return ["(all)"]
    a, b = policy_to_dict(old), policy_to_dict(new)
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


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
