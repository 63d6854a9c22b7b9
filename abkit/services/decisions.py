"""The decision use case: look at a running experiment, decide, apply -- exactly once -- and audit.

A look has three steps, each its own short transaction so that a slow analysis never holds a
write lock:

1. **read** the experiment, its policy and the previous look (monitor state, look number);
2. **analyse** -- per-arm sufficient statistics, maintained incrementally
   (:mod:`abkit.services.statistics`), then the pure
   :func:`~abkit.core.analysis.analyze` and :func:`~abkit.core.rules.decide`. Any failure here
   (store unreachable, broken data, a bug) becomes a **hold** that is recorded: the experiment
   keeps running unchanged and nothing is ever promoted on missing data;
3. **apply** -- in one transaction: record the decision with its look number and full statistics
   snapshot, and apply the action (conclude with the rollout arm and update the model registry,
   or advance the coverage ramp); with an external registry (MLflow), the alias change the
   decision makes is recorded in the outbox in the same transaction, and carried out by
   :mod:`abkit.services.registry`. The look number is unique per experiment and the experiment
   update is conditional on its revision, so with several workers racing exactly one records a
   given look and exactly one promotion ever happens; the others get
   :class:`~abkit.errors.ConflictError` and do nothing.

Manual controls (promote, rollback) take the same path, audited with the actor's name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from abkit.core.aliases import AliasNames, alias_change
from abkit.core.analysis import analyze, failed
from abkit.core.decision import Action, Decision
from abkit.core.model import Experiment, ExperimentStatus, ModelStatus
from abkit.core.rules import decide
from abkit.core.snapshot import Analysis, LookSnapshot, ManualAction, read_look
from abkit.errors import (
    AbkitError,
    ConflictError,
    StatisticsMismatchError,
    StoreUnavailableError,
    ValidationError,
)
from abkit.ports import Clock, DecisionRecord, ExperimentRecord, OutboxItem, Store, Transaction
from abkit.services.registry import MLFLOW_ALIASES
from abkit.services.statistics import StatisticsService

log = logging.getLogger(__name__)

WORKER = "worker"


@dataclass(frozen=True, slots=True)
class LookOutcome:
    record: DecisionRecord
    decision: Decision
    analysis: Analysis | None


Listener = Callable[[ExperimentRecord, DecisionRecord], None]


class DecisionService:
    """Looks, decisions and manual controls. ``listeners`` hear every recorded decision.

    A look's statistics are maintained (:mod:`abkit.services.statistics`): it reads only what
    arrived since the last look. Every ``reconcile_every``-th look (0: never), and before any
    decision that changes the allocation (promote, roll back, stop, ramp), it also recomputes
    them from every row; a difference is recorded as a hold, never a decision, and the state is
    rebuilt from the start at the next look.

    With ``aliases`` (an external registry is configured), every terminal decision also
    records, in its own transaction, the alias change it makes in the registry (the outbox).
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        listeners: tuple[Listener, ...] = (),
        *,
        reconcile_every: int = 24,
        aliases: AliasNames | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._listeners = listeners
        self._statistics = StatisticsService(store, clock)
        self._reconcile_every = reconcile_every
        self._aliases = aliases

    # -- scheduling ------------------------------------------------------------------------------

    def due(self) -> list[str]:
        """Running experiments with a policy whose look interval has passed since the last look."""
        now = self._clock.now()
        keys = []
        with self._store.transaction() as tx:
            for record in tx.experiments.list():
                if record.experiment.status is not ExperimentStatus.RUNNING:
                    continue
                policy = record.policy
                if policy is None:
                    if record.policy_error is not None:
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
        if experiment.status is not ExperimentStatus.RUNNING or (
            record.policy is None and record.policy_error is None
        ):
            return None
        look = (last.look or 0) + 1 if last is not None else 1
        previous = (
            read_look(last.snapshot, experiment_key=key, look=last.look, at=last.decided_at)
            if last is not None
            else None
        )
        analysis, verified = self._analyse(record, previous, look, now)
        decision = (
            decide(analysis, record.policy, now)
            if record.policy is not None and analysis.error is None
            else Decision(Action.HOLD, (f"holding, nothing changes: {analysis.error}",))
        )
        if decision.action not in (Action.CONTINUE, Action.HOLD) and not verified:
            problem = self._verify(record)
            if problem is not None:  # nothing computed from the wrong numbers is kept
                state = previous.analysis.state if previous is not None else None
                analysis = failed(
                    record.experiment, look=look, at=now, error=problem, previous=state
                )
                decision = Decision(Action.HOLD, (f"holding, nothing changes: {problem}",))
        if decision.action is not Action.RAMP:
            since = analysis.coverage_since or record.started_at
            analysis = replace(analysis, coverage_since=since)
        snapshot = LookSnapshot(analysis, record.policy, decision).to_dict()
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

    def _analyse(
        self,
        record: ExperimentRecord,
        previous: LookSnapshot | None,
        look: int,
        now: datetime,
    ) -> tuple[Analysis, bool]:
        """The look's analysis, and whether its statistics were verified against a full
        recomputation; whatever goes wrong becomes a failed analysis (a hold)."""
        state = previous.analysis.state if previous is not None else None
        verified = False
        try:
            policy = record.policy
            if policy is None:
                raise ValidationError("", record.policy_error or "the experiment has no policy")
            summaries = self._statistics.refresh(record.key, policy.metrics).summaries
            if self._reconcile_every and look % self._reconcile_every == 0:
                problem = self._verify(record)
                if problem is not None:
                    raise StatisticsMismatchError(problem)
                verified = True
            analysis = analyze(
                record.experiment,
                policy,
                summaries,
                state,
                look=look,
                at=now,
                started_at=record.started_at,
                coverage_since=_coverage_since(previous, record),
            )
            return analysis, verified
        except Exception as exc:
            log.warning("look %d at %s failed, holding: %s", look, record.key, exc, exc_info=True)
            error = _describe(exc)
            return failed(record.experiment, look=look, at=now, error=error, previous=state), False

    def _verify(self, record: ExperimentRecord) -> str | None:
        """None when the maintained statistics equal a full recomputation; else what differs
        (and the state is dropped, so the next look rebuilds it from every row)."""
        if record.policy is None:
            return None
        try:
            check = self._statistics.reconcile(record.key, record.policy.metrics)
        except Exception as exc:
            log.warning("reconciling %s failed: %s", record.key, exc, exc_info=True)
            return f"could not verify the statistics: {_describe(exc)}"
        if check.ok:
            return None
        log.error("%s: maintained statistics differ: %s", record.key, check.differences)
        self._statistics.rebuild(record.key)
        shown = "; ".join(check.differences[:3])
        more = f" (and {len(check.differences) - 3} more)" if len(check.differences) > 3 else ""
        return (
            f"the maintained statistics differ from a full recomputation: {shown}{more}; "
            "they are rebuilt from every row at the next look"
        )

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
            if self._aliases is not None:
                _record_alias_change(tx, current, stored, self._aliases, now)
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
        snapshot = ManualAction(decision.action).to_dict()
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
        status = ModelStatus.RETIRED if undone else ModelStatus.PREVIOUS
        tx.models.set_status(model, live.version, status, now=now)
    tx.models.set_status(model, version, ModelStatus.LIVE, now=now)


def _record_alias_change(
    tx: Transaction,
    before: ExperimentRecord,
    decision: DecisionRecord,
    names: AliasNames,
    now: datetime,
) -> None:
    """Put the registry change of a terminal decision in the outbox (same transaction)."""
    if not Action.terminal_name(decision.action) or decision.arm_key is None:
        return
    if decision.id is None:
        raise ValueError("a stored decision has an id")
    undo: tuple[int, ...] = ()
    if decision.action == Action.ROLLBACK and before.experiment.rollout_arm is not None:
        undo = _promotions_since_last_rollback(tx, before.key, decision.id)
    change = alias_change(
        before.experiment,
        decision_id=decision.id,
        action=decision.action,
        rollout_arm=decision.arm_key,
        look=decision.look,
        names=names,
        undo=undo,
    )
    if change is None:  # no arm names an MLflow version
        return
    tx.outbox.add(
        OutboxItem(
            experiment_key=before.key,
            decision_id=decision.id,
            kind=MLFLOW_ALIASES,
            key=change.model,
            intent=change.to_dict(),
            created_at=now,
            next_attempt_at=now,
        )
    )


def _promotions_since_last_rollback(tx: Transaction, key: str, current: int) -> tuple[int, ...]:
    """The promotions a rollback undoes, newest first: every one since the last rollback or
    stop (a concluded experiment may be promoted to one arm, then to another)."""
    found = []
    for entry in reversed(tx.decisions.list(key)):
        if entry.id == current:
            continue
        if entry.action == Action.PROMOTE and entry.id is not None:
            found.append(entry.id)
        elif entry.action in (Action.ROLLBACK, Action.STOP_INCONCLUSIVE):
            break
    return tuple(found)


def _coverage_since(previous: LookSnapshot | None, record: ExperimentRecord) -> datetime | None:
    """Since when the experiment has had its current coverage (the ramp's step clock)."""
    if previous is None:
        return record.started_at
    if previous.decision is not None and previous.decision.action is Action.RAMP:
        return previous.analysis.at
    return previous.analysis.coverage_since or record.started_at


def _describe(exc: BaseException) -> str:
    if isinstance(exc, AbkitError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
