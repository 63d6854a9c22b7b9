"""The results service: what the worker decided on, read back for people and programs.

Every number comes from the statistics snapshot stored with each look (``decisions.snapshot``,
:func:`abkit.core.analysis.analysis_to_dict`): the page, the API and ``abkit results`` never
recompute statistics, so they show exactly what the decision was based on. Reading an audit
trail is the expensive part, so :class:`ExperimentResults` is cached per look, keyed by the
experiment's revision and its latest look's id: until the worker looks again (or someone
pauses, promotes or rolls back), a request costs two indexed single-row reads.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from abkit.core.model import ExperimentStatus
from abkit.ports import Clock, DecisionRecord, ExperimentRecord, ModelVersion, Store, Transaction

TERMINAL_ACTIONS = ("promote", "rollback", "stop_inconclusive")


@dataclass(frozen=True, slots=True)
class Effect:
    """An effect and its interval on one scale (``-inf``/``inf``: unbounded). ``exact`` is False
    when converted from the tested scale with the control mean (treated as known)."""

    value: float
    low: float
    high: float
    exact: bool


@dataclass(frozen=True, slots=True)
class ComparisonView:
    """One treatment arm against control on one metric, at the latest look."""

    metric: str
    role: str
    arm: str
    kind: str
    direction: str
    n_control: int
    n_treatment: int
    control_mean: float
    treatment_mean: float
    tested_relative: bool
    absolute: Effect
    relative: Effect
    p_value: float
    alpha: float
    status: str
    method: str
    boundary: float | None
    information_fraction: float | None
    minimum_effect: float
    margin: float | None
    better: bool
    worse: bool
    harmed: bool
    non_inferior: bool
    harm_p_value: float | None
    non_inferiority_p_value: float | None

    @property
    def tested(self) -> Effect:
        """The effect on the scale the worker tested (the chart's scale)."""
        return self.relative if self.tested_relative else self.absolute


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    look: int
    at: datetime
    units: int
    estimate: float
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class Series:
    """The estimate and confidence sequence of one comparison over the looks (tested scale);
    ``latest`` carries the metric, arm, direction, minimum effect and margin."""

    latest: ComparisonView
    points: tuple[SeriesPoint, ...]


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One entry of the audit trail: a look's decision or a manual action."""

    decided_at: datetime
    look: int | None
    action: str
    arm: str | None
    actor: str
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Srm:
    mismatch: bool
    status: str
    p_value: float
    sequential_p_value: float


@dataclass(frozen=True, slots=True)
class LookView:
    """The latest look: what the worker saw and decided."""

    look: int
    at: datetime
    action: str
    reasons: tuple[str, ...]
    error: str | None
    srm: Srm | None
    min_units_per_arm: int
    alpha: float
    look_interval_seconds: int


@dataclass(frozen=True, slots=True)
class ArmView:
    key: str
    model_version: str
    weight: float
    control: bool
    units: int


@dataclass(frozen=True, slots=True)
class ExperimentResults:
    """An experiment as of its latest look: config, numbers, chart series and audit trail."""

    key: str
    name: str
    description: str
    model: str
    status: str
    rollout_arm: str | None
    arms: tuple[ArmView, ...]
    started_at: datetime | None
    concluded_at: datetime | None
    policy: Mapping[str, Any] | None
    look: LookView | None
    comparisons: tuple[ComparisonView, ...]
    numbers_look: int | None
    """The look the comparisons come from (the latest one that could be analysed)."""
    series: tuple[Series, ...]
    timeline: tuple[TimelineEntry, ...]
    decision: TimelineEntry | None
    """The terminal decision (promote, rollback, stop) if the experiment is concluded."""

    def arm(self, key: str | None) -> ArmView | None:
        return next((a for a in self.arms if a.key == key), None)


_Version = tuple[int, int | None]  # (experiment revision, id of the latest look)


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
        if last is None:  # nothing to cache: the units come from the exposures (one count)
            counts = tx.exposures.counts(record.key)
            return build_results(record, tx.decisions.list(record.key), counts)
        version = (record.revision, last.id)
        with self._lock:
            hit = self._cache.get(record.key)
            if hit is not None and hit[0] == version:
                self._cache.move_to_end(record.key)
                return hit[1]
        results = build_results(record, tx.decisions.list(record.key), {})
        with self._lock:
            self._cache[record.key] = (version, results)
            self._cache.move_to_end(record.key)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return results


def build_results(
    record: ExperimentRecord, decisions: Sequence[DecisionRecord], counts: Mapping[str, int]
) -> ExperimentResults:
    """The results of one experiment from its audit trail (pure; the cache stores the output)."""
    looks = [
        d for d in decisions if d.look is not None and d.snapshot.get("comparisons") is not None
    ]
    timeline = tuple(
        TimelineEntry(d.decided_at, d.look, d.action, d.arm_key, d.actor, _reasons(d))
        for d in decisions
    )
    last = looks[-1] if looks else None
    policy = (last.snapshot.get("policy") if last is not None else None) or record.policy
    kinds = _metric_kinds(policy)
    # A look that could not be analysed (a hold) has no numbers: show the last one that had.
    numbers = next((d for d in reversed(looks) if _docs(d.snapshot.get("comparisons"))), None)
    docs = _docs(numbers.snapshot.get("comparisons")) if numbers is not None else []
    comparisons = tuple(_comparison(c, kinds) for c in docs)
    look = _look(last, policy) if last is not None else None
    exp = record.experiment
    units = _map(last.snapshot.get("units")) if last is not None else counts
    arms = tuple(
        ArmView(a.key, a.model_version, a.weight, a.control, _int(units.get(a.key, 0)))
        for a in exp.arms
    )
    decision = None
    if exp.status is ExperimentStatus.CONCLUDED:
        decision = next((e for e in reversed(timeline) if e.action in TERMINAL_ACTIONS), None)
    return ExperimentResults(
        key=exp.key,
        name=exp.name,
        description=exp.description,
        model=exp.model,
        status=exp.status.value,
        rollout_arm=exp.rollout_arm,
        arms=arms,
        started_at=record.started_at,
        concluded_at=record.concluded_at,
        policy=policy,
        look=look,
        comparisons=comparisons,
        numbers_look=numbers.look if numbers is not None else None,
        series=_series(looks, kinds),
        timeline=timeline,
        decision=decision,
    )


# -- reading snapshots: defensively, a missing or mistyped field is "unknown" (an old or damaged
# row must never break a page) -------------------------------------------------------------------


def _num(value: object, default: float = math.nan) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


def _opt(value: object) -> float | None:
    number = _num(value)
    return None if math.isnan(number) else number


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _str(value: object, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _docs(value: object) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _reasons(d: DecisionRecord) -> tuple[str, ...]:
    decision = d.snapshot.get("decision")
    reasons = decision.get("reasons") if isinstance(decision, Mapping) else None
    if isinstance(reasons, list) and reasons:
        return tuple(str(r) for r in reasons)
    return (d.reason,) if d.reason else ()


def _metric_kinds(policy: Mapping[str, Any] | None) -> dict[str, str]:
    p = _map(policy)
    docs = [p.get("primary"), *(p.get("guardrails") or [])]
    return {_str(m.get("metric")): _str(m.get("kind")) for m in docs if isinstance(m, Mapping)}


def _scaled(value: float, factor: float) -> float:
    return math.nan if math.isnan(factor) or factor == 0 else value * factor


def _convert(effect: Effect, factor: float) -> Effect:
    """The effect on the other scale: multiply by the control mean or by its inverse."""
    low, high = sorted((_scaled(effect.low, factor), _scaled(effect.high, factor)))
    return Effect(_scaled(effect.value, factor), low, high, exact=False)


def _comparison(c: Mapping[str, Any], kinds: Mapping[str, str]) -> ComparisonView:
    metric = _str(c.get("metric"), "?")
    control_mean = _num(c.get("control_mean"))
    tested = Effect(
        _num(c.get("estimate")),
        _num(c.get("ci_low"), -math.inf),
        _num(c.get("ci_high"), math.inf),
        exact=True,
    )
    relative = c.get("relative") is True
    if relative:
        absolute, rel = _convert(tested, control_mean), tested
    else:
        absolute, rel = tested, _convert(tested, 1.0 / control_mean if control_mean else math.nan)
    return ComparisonView(
        metric=metric,
        role=_str(c.get("role"), "primary"),
        arm=_str(c.get("arm"), "?"),
        kind=kinds.get(metric, ""),
        direction=_str(c.get("direction"), "increase"),
        n_control=_int(c.get("n_control")),
        n_treatment=_int(c.get("n_treatment")),
        control_mean=control_mean,
        treatment_mean=_num(c.get("treatment_mean")),
        tested_relative=relative,
        absolute=absolute,
        relative=rel,
        p_value=_num(c.get("p_value")),
        alpha=_num(c.get("alpha")),
        status=_str(c.get("status"), "unknown"),
        method=_str(c.get("method")),
        boundary=_opt(c.get("boundary")),
        information_fraction=_opt(c.get("information_fraction")),
        minimum_effect=_num(c.get("minimum_effect"), 0.0),
        margin=_opt(c.get("margin")),
        better=c.get("better") is True,
        worse=c.get("worse") is True,
        harmed=c.get("harmed") is True,
        non_inferior=c.get("non_inferior") is True,
        harm_p_value=_opt(c.get("harm_p_value")),
        non_inferiority_p_value=_opt(c.get("non_inferiority_p_value")),
    )


def _srm(snapshot: Mapping[str, Any]) -> Srm | None:
    chi2, sequential = _map(snapshot.get("srm")), snapshot.get("sequential_srm")
    if not isinstance(sequential, Mapping):
        return None
    return Srm(
        mismatch=sequential.get("mismatch") is True,
        status=_str(sequential.get("status"), "unknown"),
        p_value=_num(chi2.get("p_value")),
        sequential_p_value=_num(sequential.get("p_value")),
    )


def _look(d: DecisionRecord, policy: Mapping[str, Any] | None) -> LookView:
    s, p = d.snapshot, _map(policy)
    return LookView(
        look=d.look or 0,
        at=d.decided_at,
        action=d.action,
        reasons=_reasons(d),
        error=_str(s.get("error")) or None,
        srm=_srm(s),
        min_units_per_arm=_int(p.get("min_units_per_arm")),
        alpha=_num(p.get("alpha")),
        look_interval_seconds=_int(p.get("look_interval")),
    )


def _series(looks: Sequence[DecisionRecord], kinds: Mapping[str, str]) -> tuple[Series, ...]:
    points: dict[tuple[str, str, str], list[SeriesPoint]] = {}
    latest: dict[tuple[str, str, str], ComparisonView] = {}
    for d in looks:
        for doc in _docs(d.snapshot.get("comparisons")):
            c = _comparison(doc, kinds)
            key = (c.role, c.metric, c.arm)
            latest[key] = c
            n, t = c.n_control + c.n_treatment, c.tested
            point = SeriesPoint(d.look or 0, d.decided_at, n, t.value, t.low, t.high)
            points.setdefault(key, []).append(point)
    order = sorted(latest, key=lambda k: (k[0] != "primary", k))
    return tuple(Series(latest[k], tuple(points[k])) for k in order)
