"""The external model registry (MLflow) follows abkit's decisions: checked at apply, moved by an
outbox.

* :class:`VersionChecker` -- ``experiment apply`` refuses an arm whose ``models:/<name>/<version>``
  the registry does not have (a :class:`~abkit.errors.ValidationError` naming the arm and the
  URI), before anything is written.
* :class:`RegistrySync` -- the dispatcher. A terminal decision records its
  :class:`~abkit.core.aliases.AliasChange` in the outbox, in the decision's own transaction
  (:mod:`abkit.services.decisions`); :meth:`RegistrySync.dispatch` carries the pending changes
  out. For each one it claims the item (a lease: one dispatcher at a time, an attempt counted),
  reads the aliases and stores what it saw -- once, before any write -- computes the writes with
  the pure :func:`~abkit.core.aliases.plan`, makes them (each idempotent) and, in one
  transaction, deletes the item and appends the completed :class:`~abkit.core.aliases.AliasMove`
  to the experiment's audit trail. A failed attempt keeps its error and is tried again after a
  back-off (1, 2, 4, ... seconds up to ``max_retry_seconds``) until it is done: MLflow down at
  decision time delays the alias, it never loses it. Items of the same registered model are
  carried out one at a time, oldest first, so a rollback is never applied before the promotion
  it undoes.

A retry after a crash (between the writes and the completion) recomputes the same writes from
the stored observation, so nothing moves twice; the completion deletes the item only if this
dispatcher still holds it, so the audit trail records each change exactly once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from abkit.core.aliases import (
    AliasChange,
    AliasMove,
    Operation,
    OperationKind,
    parse_model_uri,
    plan,
)
from abkit.core.model import Experiment
from abkit.errors import AbkitError, ConflictError, ValidationError
from abkit.ports import (
    Clock,
    DecisionRecord,
    ExternalModelRegistry,
    OutboxItem,
    Store,
    Transaction,
)
from abkit.services.views import PendingRegistryChange

log = logging.getLogger(__name__)

MLFLOW_ALIASES = "mlflow_aliases"
"""The outbox kind of a registry change."""
REGISTRY_ACTION = "registry"
"""The audit-trail action of a completed registry change."""
REGISTRY_ACTOR = "outbox"


class VersionChecker:
    """Refuses an experiment whose arms name MLflow versions the registry does not have."""

    def __init__(self, registry: ExternalModelRegistry) -> None:
        self._registry = registry

    def __call__(self, experiment: Experiment) -> None:
        models = set()
        for i, arm in enumerate(experiment.arms):
            field = f"arms[{i}].model_version"
            uri = parse_model_uri(arm.model_version, field)
            if uri is None:
                continue
            models.add(uri.name)
            if len(models) > 1:
                raise ValidationError(
                    field,
                    f"arm {arm.key!r} names {uri}, a version of another registered model than "
                    f"the other arms ({', '.join(sorted(models - {uri.name}))}): the champion "
                    "alias is per model, so compare versions of one model",
                )
            if not self._registry.version_exists(uri.name, uri.version):
                raise ValidationError(
                    field,
                    f"arm {arm.key!r}: {uri} is not in the model registry "
                    f"({self._registry.location}); register that version first, or fix the URI",
                )


def pending_view(item: OutboxItem) -> PendingRegistryChange:
    try:
        change = AliasChange.from_dict(item.intent)
        action, description = change.action, change.describe()
    except ValidationError as exc:
        action, description = "?", str(exc)
    return PendingRegistryChange(
        item.experiment_key,
        item.decision_id,
        action,
        description,
        item.attempts,
        item.last_error,
        item.created_at,
        item.next_attempt_at,
    )


@dataclass(frozen=True, slots=True)
class DispatchReport:
    """One pass: the ids of the items done, the failed ones with their error, and how many
    pending items were left for later (not due, behind another item, held elsewhere)."""

    done: tuple[int, ...] = ()
    failed: tuple[tuple[int, str], ...] = ()
    waiting: int = 0


class RegistrySync:
    """Carries out the registry changes that decisions recorded in the outbox.

    Without a registry (``ABKIT_MLFLOW_TRACKING_URI`` unset) it only reports what is pending.
    ``lease_seconds`` bounds how long an attempt holds an item before another dispatcher may
    take it over: longer than MLflow's request timeout and retries.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        registry: ExternalModelRegistry | None,
        *,
        owner: str = "",
        lease_seconds: float = 300.0,
        first_retry_seconds: float = 1.0,
        max_retry_seconds: float = 300.0,
    ) -> None:
        self._store = store
        self._clock = clock
        self._registry = registry
        self._owner = owner or f"dispatcher-{uuid.uuid4().hex[:12]}"
        self._lease = timedelta(seconds=lease_seconds)
        self._first_retry = first_retry_seconds
        self._max_retry = max_retry_seconds

    @property
    def configured(self) -> bool:
        return self._registry is not None

    def pending(self, key: str | None = None) -> list[PendingRegistryChange]:
        """The changes not done yet (of one experiment), oldest first."""
        with self._store.transaction() as tx:
            return [pending_view(item) for item in tx.outbox.pending(key)]

    def dispatch(self) -> DispatchReport:
        """Try every due item once, in order; an item waits while an older one of the same
        model (or experiment) is pending."""
        if self._registry is None:
            return DispatchReport()
        now = self._clock.now()
        with self._store.transaction() as tx:
            items = tx.outbox.pending()
        blocked: set[str] = set()
        done, failed, waiting = [], [], 0
        for item in items:
            lanes = {f"model:{item.key}", f"experiment:{item.experiment_key}"}
            if lanes & blocked or item.next_attempt_at > now:
                blocked |= lanes
                waiting += 1
                continue
            error = self._carry_out(item)
            if error is None:
                done.append(item.id or 0)
                continue
            blocked |= lanes  # later items of these lanes wait until this one is done
            if error:
                failed.append((item.id or 0, error))
            else:
                waiting += 1
        return DispatchReport(tuple(done), tuple(failed), waiting)

    def _carry_out(self, item: OutboxItem) -> str | None:
        """None when the item is done; its error when the attempt failed; "" when another
        dispatcher holds it (or it went away)."""
        assert item.id is not None  # stored items have ids
        now = self._clock.now()
        with self._store.transaction() as tx:
            claimed = tx.outbox.claim(item.id, owner=self._owner, now=now, until=now + self._lease)
        if claimed is None:
            return ""
        try:
            move = self._move(claimed)
        except ConflictError as exc:  # the lease was lost: whoever holds the item now goes on
            log.warning("registry change %s: %s", item.id, exc)
            return ""
        # A failure of any kind is kept on the item and retried; nothing is ever dropped.
        except Exception as exc:  # noqa: BLE001
            error = str(exc) if isinstance(exc, AbkitError) else f"{type(exc).__name__}: {exc}"
            self._retry_later(claimed, error)
            return error
        try:
            self._complete(claimed, move)
        except ConflictError as exc:
            log.warning("registry change %s done, recorded by another dispatcher: %s", item.id, exc)
            return ""
        return None

    def _move(self, item: OutboxItem) -> AliasMove:
        """Read (once), plan, write: the completed move, not yet recorded."""
        assert self._registry is not None and item.id is not None
        change = AliasChange.from_dict(item.intent)
        observed = item.observed
        if observed is None:
            aliases = self._registry.aliases(change.model)
            observed = {alias: aliases.get(alias) for alias in change.names.all}
            with self._store.transaction() as tx:
                if not tx.outbox.observe(item.id, owner=self._owner, observed=observed):
                    raise ConflictError("another dispatcher took the item over")
        with self._store.transaction() as tx:
            undone = _moves(tx, change.experiment_key, change.undo)
        result = plan(change, observed, undone)
        for operation in result.operations:
            self._write(operation)
        tagged = tuple(f"models:/{t.model}/{t.version}" for t in change.tags)
        return AliasMove(
            decision_id=change.decision_id,
            action=change.action,
            model=change.model,
            before={alias: observed.get(alias) for alias in change.names.all},
            after=dict(result.after),
            tagged=tagged,
            notes=result.notes,
            attempts=item.attempts,
        )

    def _write(self, operation: Operation) -> None:
        assert self._registry is not None
        registry, model = self._registry, operation.model
        if operation.kind is OperationKind.SET_ALIAS and operation.version is not None:
            registry.set_alias(model, operation.name, operation.version)
        elif operation.kind is OperationKind.DELETE_ALIAS:
            registry.delete_alias(model, operation.name)
        elif operation.kind is OperationKind.SET_TAG and operation.version is not None:
            registry.set_tag(model, operation.version, operation.name, operation.value)

    def _complete(self, item: OutboxItem, move: AliasMove) -> None:
        """Delete the item and audit the move, together: exactly one audit entry per change."""
        assert item.id is not None
        now = self._clock.now()
        with self._store.transaction() as tx:
            if not tx.outbox.remove(item.id, owner=self._owner):
                raise ConflictError("the item is no longer held by this dispatcher")
            record = tx.experiments.get(item.experiment_key)
            tx.decisions.add(
                DecisionRecord(
                    experiment_key=item.experiment_key,
                    action=REGISTRY_ACTION,
                    reason="; ".join(move.reasons()),
                    actor=REGISTRY_ACTOR,
                    config_checksum=record.experiment.config_checksum,
                    decided_at=now,
                    snapshot=move.to_dict(),
                )
            )
        log.info("%s: %s", item.experiment_key, "; ".join(move.reasons()))

    def _retry_later(self, item: OutboxItem, error: str) -> None:
        assert item.id is not None
        now = self._clock.now()
        delay = min(self._max_retry, self._first_retry * 2 ** max(0, item.attempts - 1))
        log.warning(
            "%s: registry change (attempt %d) failed, retrying in %.0f s: %s",
            item.experiment_key,
            item.attempts,
            delay,
            error,
        )
        with self._store.transaction() as tx:
            tx.outbox.release(
                item.id,
                owner=self._owner,
                error=error,
                retry_at=now + timedelta(seconds=delay),
                now=now,
            )


def _moves(tx: Transaction, key: str, decision_ids: Sequence[int]) -> list[AliasMove]:
    """The recorded moves of these decisions, in the order of ``decision_ids``."""
    if not decision_ids:
        return []
    found: dict[int, AliasMove] = {}
    for entry in tx.decisions.list(key):
        if entry.action == REGISTRY_ACTION:
            move = AliasMove.from_dict(entry.snapshot)
            if move is not None:
                found[move.decision_id] = move
    return [found[i] for i in decision_ids if i in found]
