"""The results use case: what the worker decided on, read back for people and programs.

Every number comes from the look snapshots stored with each look (:mod:`abkit.core.snapshot`,
read with :func:`~abkit.core.snapshot.read_entry`): the page, the API and ``abkit results``
never recompute statistics, so they show exactly what the decision was based on. Reading an
audit trail is the expensive part, so :class:`~abkit.services.views.ExperimentResults` is cached
per look, keyed by the experiment's revision and its latest look's id: until the worker looks
again (or someone pauses, promotes or rolls back, or a registry change the outbox holds moves
on), a request costs three indexed reads of a row or none (the experiment, its latest look, its
pending registry changes).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence

from abkit.core.metrics import MetricKind
from abkit.core.model import ExperimentStatus
from abkit.core.policy import Policy
from abkit.core.snapshot import Comparison, LookSnapshot, Role, read_entry
from abkit.ports import Clock, DecisionRecord, ExperimentRecord, ModelVersion, Store, Transaction
from abkit.services.registry import pending_view
from abkit.services.views import (
    ArmView,
    ComparisonView,
    ExperimentResults,
    LookView,
    PendingRegistryChange,
    RegistryChange,
    ScaledEffect,
    Series,
    SeriesPoint,
    SrmView,
    TimelineEntry,
)

# (experiment revision, id of the latest look, pending registry changes: ids and attempts)
_Version = tuple[int, int | None, tuple[tuple[int | None, int], ...]]


class ResultsService:
    """Read-only views of experiments, built from the stored snapshots and cached per look."""

    def __init__(self, store: Store, clock: Clock, *, cache_size: int = 256) -> None:
        self._store = store
        self._clock = clock
        self._cache: OrderedDict[str, tuple[_Version, ExperimentResults]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def experiments(self) -> list[ExperimentResults]:
        """Every experiment, ordered by key (each as cheap as :meth:`results` on a cache hit)."""
        with self._store.transaction() as tx:
            return [self._results(tx, record) for record in tx.experiments.list()]

    def results(self, key: str) -> ExperimentResults:
        """The latest look of ``key`` with its history; NotFoundError for an unknown key."""
        with self._store.transaction() as tx:
            return self._results(tx, tx.experiments.get(key))

    def model_versions(self) -> list[ModelVersion]:
        """The model registry: every version of every model and its status."""
        with self._store.transaction() as tx:
            return tx.models.versions()

    def _results(self, tx: Transaction, record: ExperimentRecord) -> ExperimentResults:
        last = tx.decisions.last_look(record.key)
        # A registry change done appends to the trail without a new look: the pending ones
        # are part of the version (usually none; one indexed read).
        outbox = tx.outbox.pending(record.key)
        pending = tuple(pending_view(item) for item in outbox)
        if last is None:  # nothing to cache: the units come from the exposures (one count)
            counts = tx.exposures.counts(record.key)
            return build_results(record, tx.decisions.list(record.key), counts, pending)
        version = (record.revision, last.id, tuple((i.id, i.attempts) for i in outbox))
        with self._lock:
            hit = self._cache.get(record.key)
            if hit is not None and hit[0] == version:
                self._cache.move_to_end(record.key)
                return hit[1]
        results = build_results(record, tx.decisions.list(record.key), {}, pending)
        with self._lock:
            self._cache[record.key] = (version, results)
            self._cache.move_to_end(record.key)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return results


def build_results(
    record: ExperimentRecord,
    decisions: Sequence[DecisionRecord],
    counts: Mapping[str, int],
    pending: Sequence[PendingRegistryChange] = (),
) -> ExperimentResults:
    """The results of one experiment from its audit trail (pure; the cache stores the output)."""
    entries = [(d, _read(d)) for d in decisions]
    looks = [(d, e) for d, e in entries if isinstance(e, LookSnapshot)]
    timeline = tuple(_entry(d, e) for d, e in entries)
    last = looks[-1] if looks else None
    policy = (last[1].policy if last is not None else None) or record.policy
    kinds = {m.name: m.kind for m in policy.metrics} if policy is not None else {}
    # A look that could not be analysed (a hold) has no numbers: show the last one that had.
    numbers = next(((d, s) for d, s in reversed(looks) if s.analysis.comparisons), None)
    comparisons = tuple(_view(c, kinds) for c in numbers[1].analysis.comparisons) if numbers else ()
    units = last[1].analysis.units if last is not None else counts
    exp = record.experiment
    arms = tuple(
        ArmView(a.key, a.model_version, a.weight, a.control, units.get(a.key, 0)) for a in exp.arms
    )
    decision = None
    if exp.status is ExperimentStatus.CONCLUDED:
        decision = next((e for e in reversed(timeline) if e.terminal), None)
    return ExperimentResults(
        key=exp.key,
        name=exp.name,
        description=exp.description,
        model=exp.model,
        status=exp.status,
        rollout_arm=exp.rollout_arm,
        arms=arms,
        started_at=record.started_at,
        concluded_at=record.concluded_at,
        policy=policy,
        look=_look(last[0], last[1], policy) if last is not None else None,
        comparisons=comparisons,
        numbers_look=numbers[0].look if numbers is not None else None,
        series=_series(looks, kinds),
        timeline=timeline,
        decision=decision,
        registry_pending=tuple(pending),
    )


def registry_changes(experiments: Iterable[ExperimentResults]) -> list[RegistryChange]:
    """Every promotion, rollback and stop of every experiment, newest first."""
    changes = []
    for r in experiments:
        for e in r.timeline:
            if e.terminal:
                arm = r.arm(e.arm)
                version = arm.model_version if arm is not None else None
                changes.append(
                    RegistryChange(
                        e.decided_at, r.model, r.key, e.action, e.arm, version, e.actor, e.reasons
                    )
                )
    return sorted(changes, key=lambda c: c.decided_at, reverse=True)


def _read(d: DecisionRecord) -> object:
    return read_entry(d.snapshot, experiment_key=d.experiment_key, look=d.look, at=d.decided_at)


def _entry(d: DecisionRecord, entry: object) -> TimelineEntry:
    reasons: tuple[str, ...] = (d.reason,) if d.reason else ()
    if isinstance(entry, LookSnapshot) and entry.decision is not None and entry.decision.reasons:
        reasons = entry.decision.reasons
    return TimelineEntry(d.decided_at, d.look, d.action, d.arm_key, d.actor, reasons)


def _scaled(value: float, factor: float) -> float:
    return math.nan if math.isnan(factor) or factor == 0 else value * factor


def _convert(effect: ScaledEffect, factor: float) -> ScaledEffect:
    """The effect on the other scale: multiply by the control mean or by its inverse."""
    low, high = sorted((_scaled(effect.low, factor), _scaled(effect.high, factor)))
    return ScaledEffect(_scaled(effect.value, factor), low, high, exact=False)


def _view(c: Comparison, kinds: Mapping[str, MetricKind]) -> ComparisonView:
    tested = ScaledEffect(c.estimate, c.ci_low, c.ci_high, exact=True)
    mean = c.control_mean
    if c.relative:
        absolute, relative = _convert(tested, mean), tested
    else:
        absolute, relative = tested, _convert(tested, 1.0 / mean if mean else math.nan)
    return ComparisonView(
        metric=c.metric,
        role=c.role,
        arm=c.arm,
        kind=kinds.get(c.metric),
        direction=c.direction,
        n_control=c.n_control,
        n_treatment=c.n_treatment,
        control_mean=mean,
        treatment_mean=c.treatment_mean,
        tested_relative=c.relative,
        absolute=absolute,
        relative=relative,
        p_value=c.p_value,
        alpha=c.alpha,
        status=c.status,
        method=c.method,
        boundary=c.boundary,
        information_fraction=c.information_fraction,
        minimum_effect=c.minimum_effect,
        margin=c.margin,
        better=c.better,
        worse=c.worse,
        harmed=c.harmed,
        non_inferior=c.non_inferior,
        harm_p_value=c.harm_p_value,
        non_inferiority_p_value=c.non_inferiority_p_value,
    )


def _look(d: DecisionRecord, snapshot: LookSnapshot, policy: Policy | None) -> LookView:
    analysis = snapshot.analysis
    srm = None
    if analysis.sequential_srm is not None:
        chi2 = analysis.srm
        srm = SrmView(
            mismatch=analysis.sequential_srm.mismatch,
            status=analysis.sequential_srm.status,
            p_value=chi2.p_value if chi2 is not None else math.nan,
            sequential_p_value=analysis.sequential_srm.p_value,
        )
    reasons = _entry(d, snapshot).reasons
    return LookView(
        look=d.look or 0,
        at=d.decided_at,
        action=d.action,
        reasons=reasons,
        error=analysis.error,
        srm=srm,
        min_units_per_arm=policy.min_units_per_arm if policy is not None else 0,
        alpha=policy.alpha if policy is not None else math.nan,
        look_interval_seconds=policy.look_interval_seconds if policy is not None else 0,
    )


def _series(
    looks: Sequence[tuple[DecisionRecord, LookSnapshot]], kinds: Mapping[str, MetricKind]
) -> tuple[Series, ...]:
    points: dict[tuple[Role, str, str], list[SeriesPoint]] = {}
    latest: dict[tuple[Role, str, str], ComparisonView] = {}
    for d, snapshot in looks:
        for comparison in snapshot.analysis.comparisons:
            c = _view(comparison, kinds)
            key = (c.role, c.metric, c.arm)
            latest[key] = c
            n, t = c.n_control + c.n_treatment, c.tested
            point = SeriesPoint(d.look or 0, d.decided_at, n, t.value, t.low, t.high)
            points.setdefault(key, []).append(point)
    order = sorted(latest, key=lambda k: (k[0] is not Role.PRIMARY, k))
    return tuple(Series(latest[k], tuple(points[k])) for k in order)
