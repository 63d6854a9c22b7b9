"""The decision use case: look at a running experiment, decide, apply -- exactly once -- and audit.

A look has three steps, each its own short transaction so that a slow analysis never holds a
write lock:

1. **read** the experiment, its policy and the previous look (monitor state, look number);
2. **analyse** -- per-arm sufficient statistics from the store, then the pure
   :func:`~abkit.core.analysis.analyze` and :func:`~abkit.core.policy.decide`. Any failure here
   (store unreachable, broken data, a bug) becomes a **hold** that is recorded: the experiment
   keeps running unchanged and nothing is ever promoted on missing data;
3. **apply** -- in one transaction: record the decision with its look number and full statistics
   snapshot, and apply the action (conclude with the rollout arm and update the model registry,
   or advance the coverage ramp). The look number is unique per experiment and the experiment
   update is conditional on its revision, so with several workers racing exactly one records a
   given look and exactly one promotion ever happens; the others get
   :class:`~abkit.errors.ConflictError` and do nothing.

Manual controls (promote, rollback) take the same path, audited with the actor's name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from abkit.core.analysis import Analysis, analysis_to_dict, analyze, failed
from abkit.core.model import Experiment, ExperimentStatus
from abkit.core.policy import Action, Decision, Policy, decide, policy_from_dict, policy_to_dict
from abkit.errors import AbkitError, ConflictError, StoreUnavailableError, ValidationError
from abkit.ports import Clock, DecisionRecord, ExperimentRecord, Store, Transaction

log = logging.getLogger(__name__)

WORKER = "worker"


@dataclass(frozen=True, slots=True)
class LookOutcome:
    record: DecisionRecord
    decision: Decision
    analysis: Analysis | None


Listener = Callable[[ExperimentRecord, DecisionRecord], None]


class DecisionService:
    """Looks, decisions and manual controls. ``listeners`` hear every recorded decision."""

    def __init__(self, store: Store, clock: Clock, listeners: tuple[Listener, ...] = ()) -> None:
        self._store = store
        self._clock = clock
        self._listeners = listeners

    # -- scheduling ------------------------------------------------------------------------------

    def due(self) -> list[str]:
        """Running experiments with a policy whose look interval has passed since the last look."""
        now = self._clock.now()
        keys = []
        with self._store.transaction() as tx:
            for record in tx.experiments.list():
                if record.experiment.status is not ExperimentStatus.RUNNING or not record.policy:
                    continue
                try:
                    policy = policy_from_dict(record.policy)
                except ValidationError:
                    keys.append(record.key)  # the look records why it cannot run
                    continue
                last = tx.decisions.last_look(record.key)
                interval = timedelta(seconds=policy.look_interval_seconds)
                if last is None or now - last.decided_at >= interval:
                    keys.append(record.key)
        return keys

    # -- looking ---------------------------------------------------------------------------------

    def look(self, key: str, *, actor: str = WORKER) -> LookOutcome | None:
        """One look at ``key``. None when there is nothing to do or another worker took it."""
        now = self._clock.now()
        with self._store.transaction() as tx:
            record = tx.experiments.get(key)
            last = tx.decisions.last_look(key)
        experiment = record.experiment
        if experiment.status is not ExperimentStatus.RUNNING or not record.policy:
            return None
        look = (last.look or 0) + 1 if last is not None else 1
        previous = dict(last.snapshot) if last is not None else {}
        policy: Policy | None = None
        try:
            policy = policy_from_dict(record.policy)
            with self._store.transaction() as tx:
                summaries = tx.analysis.summaries(key, policy.metrics)
            analysis = analyze(
                experiment,
                policy,
                summaries,
                previous.get("state"),
                look=look,
                at=now,
                started_at=record.started_at,
                coverage_since=_coverage_since(previous, record),
            )
        except Exception as exc:
            log.warning("look %d at %s failed, holding: %s", look, key, exc, exc_info=True)
            analysis = failed(experiment, look=look, at=now, error=_describe(exc))
        decision = (
            decide(analysis, policy, now)
            if policy is not None and analysis.error is None
            else Decision(Action.HOLD, (f"holding, nothing changes: {analysis.error}",))
        )
        snapshot = analysis_to_dict(analysis)
        snapshot["policy"] = policy_to_dict(policy) if policy is not None else None
        snapshot["decision"] = {"action": decision.action.value, "reasons": list(decision.reasons)}
        if decision.action is not Action.RAMP:
            snapshot["coverage_since"] = snapshot["coverage_since"] or _iso(record.started_at)
        try:
            stored, updated = self._apply(
                record, decision, actor=actor, look=look, snapshot=snapshot, now=now
            )
        except ConflictError as exc:
            log.info("look %d at %s already taken by another worker: %s", look, key, exc)
            return None
        except StoreUnavailableError as exc:
            log.error("look %d at %s: could not record %s: %s", look, key, decision.action, exc)
            return None
        self._notify(updated, stored)
        return LookOutcome(stored, decision, analysis)

    def _apply(
        self,
        seen: ExperimentRecord,
        decision: Decision,
        *,
        actor: str,
        look: int | None,
        snapshot: dict[str, Any],
        now: datetime,
    ) -> tuple[DecisionRecord, ExperimentRecord]:
        with self._store.transaction() as tx:
            current = tx.experiments.get(seen.key)
            if look is not None and (
                current.revision != seen.revision
                or current.experiment.status is not ExperimentStatus.RUNNING
            ):
                raise ConflictError(f"{seen.key!r} changed while it was being analysed")
            stored = tx.decisions.add(
                DecisionRecord(
                    experiment_key=seen.key,
                    action=decision.action.value,
                    reason=decision.reason,
                    actor=actor,
                    config_checksum=current.experiment.config_checksum,
                    decided_at=now,
                    arm_key=decision.arm,
                    snapshot=snapshot,
                    look=look,
                )
            )
            updated = _act(tx, current, decision, now)
            return stored, updated

    def _notify(self, record: ExperimentRecord, decision: DecisionRecord) -> None:
        for listener in self._listeners:
            try:
                listener(record, decision)
            except Exception:
                log.exception("decision listener %r failed", listener)

    # -- manual controls -------------------------------------------------------------------------

    def promote(self, key: str, arm: str, *, actor: str, reason: str = "") -> DecisionRecord:
        """Promote ``arm`` now: it becomes the rollout arm and its model version goes live."""
        with self._store.transaction() as tx:
            record = tx.experiments.get(key)
        record.experiment.arm(arm)  # ValidationError naming the arms if unknown
        status = record.experiment.status
        if status is ExperimentStatus.CONCLUDED and record.experiment.rollout_arm == arm:
            raise ConflictError(f"{key!r} already rolled out {arm!r}")
        if status is ExperimentStatus.DRAFT:
            raise ConflictError(f"{key!r} is a draft: start it (or edit the file) first")
        decision = Decision(
            Action.PROMOTE, (reason or f"manual promotion of {arm} by {actor}",), arm=arm
        )
        return self._manual(record, decision, actor)

    def rollback(self, key: str, *, actor: str, reason: str = "") -> DecisionRecord:
        """Roll back to control now (also undoes an earlier promotion)."""
        with self._store.transaction() as tx:
            record = tx.experiments.get(key)
        control = record.experiment.control.key
        if record.experiment.rollout_arm == control:
            raise ConflictError(f"{key!r} already serves its control {control!r} to everyone")
        if record.experiment.status is ExperimentStatus.DRAFT:
            raise ConflictError(f"{key!r} is a draft: there is nothing to roll back")
        decision = Decision(
            Action.ROLLBACK, (reason or f"manual rollback by {actor}",), arm=control
        )
        return self._manual(record, decision, actor)

    def _manual(self, record: ExperimentRecord, decision: Decision, actor: str) -> DecisionRecord:
        now = self._clock.now()
        snapshot = {"manual": True, "decision": {"action": decision.action.value}}
        stored, updated = self._apply(
            record, decision, actor=actor, look=None, snapshot=snapshot, now=now
        )
        self._notify(updated, stored)
        return stored


def _act(
    tx: Transaction, record: ExperimentRecord, decision: Decision, now: datetime
) -> ExperimentRecord:
    """Apply the decision's allocation change (the only changes a started experiment gets)."""
    experiment = record.experiment
    if decision.action is Action.RAMP and decision.coverage is not None:
        changed = replace(experiment, coverage=decision.coverage)
        return tx.experiments.save(
            replace(record, experiment=changed, updated_at=now), expected_revision=record.revision
        )
    if not decision.action.terminal or decision.arm is None:
        return record
    previous_rollout = experiment.rollout_arm
    concluded = replace(experiment, status=ExperimentStatus.CONCLUDED, rollout_arm=decision.arm)
    saved = tx.experiments.save(
        replace(record, experiment=concluded, updated_at=now, concluded_at=now),
        expected_revision=record.revision,
    )
    _update_registry(tx, experiment, decision.arm, previous_rollout, now)
    return saved


def _update_registry(
    tx: Transaction,
    experiment: Experiment,
    rollout_arm: str,
    previous_rollout: str | None,
    now: datetime,
) -> None:
    """Make the rollout arm's model version live, keeping the one it replaces as ``previous``."""
    model = experiment.model
    version = experiment.arm(rollout_arm).model_version
    tx.models.register(model, version, now=now, experiment_key=experiment.key)
    live = tx.models.live(model)
    if live is not None and live.version == version:
        return
    if live is not None:
        # Undoing a promotion retires the version that was promoted; otherwise the replaced
        # version stays at hand as "previous", ready for a rollback.
        undone = previous_rollout is not None and (
            experiment.arm(previous_rollout).model_version == live.version
        )
        tx.models.set_status(model, live.version, "retired" if undone else "previous", now=now)
    tx.models.set_status(model, version, "live", now=now)


def _coverage_since(previous: Mapping[str, Any], record: ExperimentRecord) -> datetime | None:
    decision = previous.get("decision") or {}
    if decision.get("action") == Action.RAMP.value and previous.get("at"):
        return datetime.fromisoformat(previous["at"])
    since = previous.get("coverage_since")
    return datetime.fromisoformat(since) if since else record.started_at


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, AbkitError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
