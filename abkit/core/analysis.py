"""One look at an experiment: every test the policy needs, computed from sufficient statistics.

``analyze(...)`` is pure. It takes the cumulative per-arm summaries the store computed, the
policy, and the monitor state persisted by the previous look, and returns an :class:`Analysis`:
per treatment arm and metric a :class:`Comparison`, the SRM checks, and the new monitor state to
persist. ``abkit.core.policy.decide`` turns it into a decision; the results page shows it as is.

Tests per treatment arm (``k`` treatment arms, alpha from the policy):

* **primary** -- always-valid mode: a two-sided normal-mixture confidence sequence at
  ``alpha / k`` (Bonferroni across arms, the README's "Statistics" section), running
  intersection and running-minimum p kept across looks; group-sequential mode: a Lan-DeMets
  design at ``alpha / k`` over ``max_units``, repeated confidence interval ``est +- c_k se``.
* **guardrail** -- two one-sided always-valid tests at ``alpha``, each with its own running
  state: *harm* (``H1``: the metric moved the bad way by more than ``margin``) and
  *non-inferiority* (``H1``: it did not move the bad way by ``margin`` or more). Requiring every
  guardrail to pass non-inferiority before promoting is an intersection-union test, so no
  correction is needed there; the harm test's null sits at the margin, so an unharmed guardrail
  almost never trips it.
* **SRM** -- Pearson chi-square (reported) and the sequential Dirichlet-multinomial test
  (decides: it stays valid at every look).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from abkit.core.model import Experiment
from abkit.core.policy import Direction, Guardrail, Mode, Policy
from abkit.core.stats import (
    ArmSummary,
    GroupSequentialMonitor,
    GroupSequentialState,
    MonitorState,
    RatioSummary,
    SequentialMonitor,
    SrmResult,
    TestStatus,
    sequential_srm_test,
    srm_test,
)
from abkit.core.stats.sequential import DEFAULT_N_STAR

Summary = ArmSummary | RatioSummary


@dataclass(frozen=True, slots=True)
class Comparison:
    """One treatment arm against control on one metric, at one look."""

    metric: str
    role: str  # "primary" or "guardrail"
    arm: str
    n_control: int
    n_treatment: int
    control_mean: float
    treatment_mean: float
    relative: bool
    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    status: TestStatus
    method: str
    alpha: float
    direction: Direction
    # primary
    minimum_effect: float = 0.0
    better: bool = False
    worse: bool = False
    boundary: float | None = None
    information_fraction: float | None = None
    # guardrail
    margin: float | None = None
    harm_p_value: float | None = None
    harmed: bool = False
    non_inferiority_p_value: float | None = None
    non_inferior: bool = False

    @property
    def shows_harm(self) -> bool:
        """Harm detected, or the point estimate already beyond the margin the bad way."""
        if self.role != "guardrail" or self.margin is None:
            return False
        if self.harmed:
            return True
        bad = -self.direction.sign * self.estimate
        return math.isfinite(bad) and bad > self.margin


@dataclass(frozen=True, slots=True)
class Analysis:
    experiment_key: str
    control: str
    look: int
    at: datetime
    started_at: datetime | None
    coverage: float
    config_checksum: str
    coverage_since: datetime | None
    units: Mapping[str, int]
    weights: Mapping[str, float]
    srm: SrmResult | None
    sequential_srm: SrmResult | None
    comparisons: tuple[Comparison, ...] = ()
    state: Mapping[str, Any] = field(default_factory=dict)
    final_look: bool = False
    error: str | None = None

    @property
    def elapsed_seconds(self) -> float:
        return 0.0 if self.started_at is None else (self.at - self.started_at).total_seconds()

    def primary(self) -> tuple[Comparison, ...]:
        return tuple(c for c in self.comparisons if c.role == "primary")

    def guardrails(self, arm: str | None = None) -> tuple[Comparison, ...]:
        return tuple(
            c for c in self.comparisons if c.role == "guardrail" and (arm is None or c.arm == arm)
        )


def failed(experiment: Experiment, *, look: int, at: datetime, error: str) -> Analysis:
    """The analysis of a look that could not be computed (the policy holds on it)."""
    return Analysis(
        experiment_key=experiment.key,
        control=experiment.control.key,
        look=look,
        at=at,
        started_at=None,
        coverage=experiment.coverage,
        config_checksum=experiment.config_checksum,
        coverage_since=None,
        units={},
        weights={a.key: a.weight for a in experiment.arms},
        srm=None,
        sequential_srm=None,
        error=error,
    )


def _mean(summary: Summary | None) -> float:
    if summary is None or summary.n == 0:
        return math.nan
    if isinstance(summary, RatioSummary):
        return summary.num_sum / summary.den_sum if summary.den_sum else math.nan
    return summary.sum / summary.n


def _empty(summary_kind: type[Summary]) -> Summary:
    return RatioSummary(0, 0, 0, 0, 0, 0) if summary_kind is RatioSummary else ArmSummary(0, 0, 0)


def _monitor_state(doc: Mapping[str, Any] | None) -> MonitorState | None:
    if not doc:
        return None
    return MonitorState(
        looks=int(doc["looks"]),
        p_value=float(doc["p_value"]),
        ci_low=-math.inf if doc["ci_low"] is None else float(doc["ci_low"]),
        ci_high=math.inf if doc["ci_high"] is None else float(doc["ci_high"]),
        n_total=int(doc["n_total"]),
    )


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _monitor_doc(state: MonitorState) -> dict[str, Any]:
    return {
        "looks": state.looks,
        "p_value": state.p_value,
        "ci_low": _finite_or_none(state.ci_low),
        "ci_high": _finite_or_none(state.ci_high),
        "n_total": state.n_total,
    }


def _n_star(policy: Policy) -> float:
    return float(policy.max_units) if policy.max_units else DEFAULT_N_STAR


def analyze(
    experiment: Experiment,
    policy: Policy,
    summaries: Mapping[str, Mapping[str, Summary]],
    previous_state: Mapping[str, Any] | None,
    *,
    look: int,
    at: datetime,
    started_at: datetime | None,
    coverage_since: datetime | None = None,
) -> Analysis:
    """Run every test of ``policy`` on one look's cumulative ``summaries``."""
    previous = previous_state or {}
    monitors_before: Mapping[str, Any] = previous.get("monitors", {})
    gs_before: Mapping[str, Any] = previous.get("group_sequential", {})
    monitors_after: dict[str, Any] = {}
    gs_after: dict[str, Any] = {}
    control = experiment.control.key
    treatments = [a.key for a in experiment.treatments]
    primary_metric = policy.primary.metric
    primary_summaries = summaries.get(primary_metric.name, {})
    units = {a.key: _units(summaries, a.key) for a in experiment.arms}
    weights = {a.key: a.weight for a in experiment.arms}
    counts = [units[a.key] for a in experiment.arms]
    srm = srm_test(counts, list(weights.values()), threshold=policy.srm_alpha)
    sequential_srm = sequential_srm_test(
        counts,
        list(weights.values()),
        threshold=policy.srm_alpha,
        previous_p_value=float(previous.get("srm_p_value", 1.0)),
    )
    alpha_primary = policy.alpha / len(treatments)
    cuped = policy.cuped_lookback_seconds is not None
    comparisons: list[Comparison] = []
    final_look = False
    kind = RatioSummary if primary_metric.kind.value == "ratio" else ArmSummary
    c_summary = primary_summaries.get(control) or _empty(kind)
    for arm in treatments:
        t_summary = primary_summaries.get(arm) or _empty(kind)
        key = f"{primary_metric.name}/{arm}"
        primary_cuped = cuped and kind is ArmSummary
        if policy.mode is Mode.GROUP_SEQUENTIAL:
            max_units = policy.max_units or 0  # policy_from_dict requires it in this mode
            gs_doc = gs_before.get(key)
            gs = GroupSequentialMonitor(
                max_units,
                alpha=alpha_primary,
                spending=policy.spending,
                relative=policy.primary.relative,
                cuped=primary_cuped,
                state=None
                if not gs_doc
                else GroupSequentialState(tuple(gs_doc["fractions"]), int(gs_doc["last_n"])),
            )
            n_total = c_summary.n + t_summary.n
            final = n_total >= max_units
            result = gs.update(c_summary, t_summary, final=final) if n_total else None
            gs_after[key] = {"fractions": list(gs.state.fractions), "last_n": gs.state.last_n}
            if result is None or result.status is not TestStatus.OK:
                status = TestStatus.NOT_ENOUGH_DATA if result is None else result.status
                comparisons.append(
                    _primary(policy, arm, c_summary, t_summary, alpha_primary, status=status)
                )
                continue
            final_look = final_look or final
            comparisons.append(
                _primary(
                    policy,
                    arm,
                    c_summary,
                    t_summary,
                    alpha_primary,
                    status=TestStatus.OK,
                    estimate=result.estimate,
                    ci=(result.ci_low, result.ci_high),
                    p_value=result.nominal_p_value,
                    method="group_sequential",
                    boundary=result.boundary,
                    information_fraction=result.information_fraction,
                    significant=result.reject,
                )
            )
        else:
            monitor = SequentialMonitor(
                alpha=alpha_primary,
                n_star=_n_star(policy),
                relative=policy.primary.relative,
                cuped=primary_cuped,
                state=_monitor_state(monitors_before.get(key)),
            )
            r = monitor.update(c_summary, t_summary)
            monitors_after[key] = _monitor_doc(monitor.state)
            comparisons.append(
                _primary(
                    policy,
                    arm,
                    c_summary,
                    t_summary,
                    alpha_primary,
                    status=r.status,
                    estimate=r.estimate,
                    ci=(r.ci_low, r.ci_high),
                    p_value=r.p_value,
                    method=r.method.value,
                    significant=r.ok and r.p_value < alpha_primary,
                )
            )
        for guardrail in policy.guardrails:
            comparisons.append(
                _guardrail(
                    guardrail,
                    policy,
                    summaries.get(guardrail.metric.name, {}),
                    control,
                    arm,
                    monitors_before,
                    monitors_after,
                )
            )
    state = {
        "monitors": monitors_after,
        "group_sequential": gs_after,
        "srm_p_value": sequential_srm.p_value,
    }
    return Analysis(
        experiment_key=experiment.key,
        control=control,
        look=look,
        at=at,
        started_at=started_at,
        coverage=experiment.coverage,
        config_checksum=experiment.config_checksum,
        coverage_since=coverage_since or started_at,
        units=units,
        weights=weights,
        srm=srm,
        sequential_srm=sequential_srm,
        comparisons=tuple(comparisons),
        state=state,
        final_look=final_look,
    )


def _units(summaries: Mapping[str, Mapping[str, Summary]], arm: str) -> int:
    for by_arm in summaries.values():
        if arm in by_arm:
            return by_arm[arm].n
    return 0


def _primary(
    policy: Policy,
    arm: str,
    control: Summary,
    treatment: Summary,
    alpha: float,
    *,
    status: TestStatus,
    estimate: float = math.nan,
    ci: tuple[float, float] = (-math.inf, math.inf),
    p_value: float = 1.0,
    method: str = "",
    boundary: float | None = None,
    information_fraction: float | None = None,
    significant: bool = False,
) -> Comparison:
    primary = policy.primary
    sign = primary.direction.sign
    low, high = ci
    ok = status is TestStatus.OK
    # On the good side: the whole interval beyond the minimum effect; on the bad side: the whole
    # interval below zero. Both read the direction-adjusted interval [sign*low, sign*high].
    good_low = min(sign * low, sign * high)
    good_high = max(sign * low, sign * high)
    return Comparison(
        metric=primary.metric.name,
        role="primary",
        arm=arm,
        n_control=control.n,
        n_treatment=treatment.n,
        control_mean=_mean(control),
        treatment_mean=_mean(treatment),
        relative=primary.relative,
        estimate=estimate,
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        status=status,
        method=method,
        alpha=alpha,
        direction=primary.direction,
        minimum_effect=primary.minimum_effect,
        better=ok and significant and good_low > primary.minimum_effect,
        worse=ok and significant and good_high < 0.0,
        boundary=boundary,
        information_fraction=information_fraction,
    )


def _guardrail(
    guardrail: Guardrail,
    policy: Policy,
    by_arm: Mapping[str, Summary],
    control: str,
    arm: str,
    monitors_before: Mapping[str, Any],
    monitors_after: dict[str, Any],
) -> Comparison:
    kind = RatioSummary if guardrail.metric.kind.value == "ratio" else ArmSummary
    c_summary = by_arm.get(control) or _empty(kind)
    t_summary = by_arm.get(arm) or _empty(kind)
    cuped = policy.cuped_lookback_seconds is not None and kind is ArmSummary
    m = guardrail.margin
    # Harm is a move the bad way: down for an increase-is-good metric, up otherwise.
    if guardrail.direction is Direction.INCREASE:
        null, harm_side, safe_side = -m, "less", "greater"
    else:
        null, harm_side, safe_side = m, "greater", "less"
    results = {}
    for test, alternative in (("harm", harm_side), ("non_inferiority", safe_side)):
        key = f"{guardrail.metric.name}/{arm}/{test}"
        monitor = SequentialMonitor(
            alpha=policy.alpha,
            n_star=_n_star(policy),
            null=null,
            sides=1,
            relative=guardrail.relative,
            cuped=cuped,
            alternative=alternative,
            state=_monitor_state(monitors_before.get(key)),
        )
        results[test] = monitor.update(c_summary, t_summary)
        monitors_after[key] = _monitor_doc(monitor.state)
    harm_r, safe_r = results["harm"], results["non_inferiority"]
    two_sided = SequentialMonitor(
        alpha=policy.alpha,
        n_star=_n_star(policy),
        relative=guardrail.relative,
        cuped=cuped,
        state=_monitor_state(monitors_before.get(f"{guardrail.metric.name}/{arm}/interval")),
    )
    interval = two_sided.update(c_summary, t_summary)
    monitors_after[f"{guardrail.metric.name}/{arm}/interval"] = _monitor_doc(two_sided.state)
    return Comparison(
        metric=guardrail.metric.name,
        role="guardrail",
        arm=arm,
        n_control=c_summary.n,
        n_treatment=t_summary.n,
        control_mean=_mean(c_summary),
        treatment_mean=_mean(t_summary),
        relative=guardrail.relative,
        estimate=interval.estimate,
        ci_low=interval.ci_low,
        ci_high=interval.ci_high,
        p_value=interval.p_value,
        status=interval.status,
        method=interval.method.value,
        alpha=policy.alpha,
        direction=guardrail.direction,
        margin=m,
        harm_p_value=harm_r.p_value,
        harmed=harm_r.ok and harm_r.p_value < policy.alpha,
        non_inferiority_p_value=safe_r.p_value,
        non_inferior=safe_r.ok and safe_r.p_value < policy.alpha,
    )


def _json_number(value: float | None) -> float | None:
    """JSON has no NaN or infinity (and PostgreSQL's jsonb refuses them): they become null."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _srm_doc(result: SrmResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {
        "p_value": _json_number(result.p_value),
        "mismatch": result.mismatch,
        "status": result.status.value,
        "statistic": _json_number(result.statistic),
        "e_value": _json_number(result.e_value),
        "expected": [_json_number(e) for e in result.expected],
    }


def comparison_to_dict(c: Comparison) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for name in c.__dataclass_fields__:
        value = getattr(c, name)
        if isinstance(value, float):
            value = _json_number(value)
        elif hasattr(value, "value"):  # enums
            value = value.value
        doc[name] = value
    return doc


def analysis_to_dict(a: Analysis) -> dict[str, Any]:
    """The JSON snapshot stored with the look's decision (and read by the results page).

    Infinite interval bounds and undefined means are ``null``.
    """
    return {
        "look": a.look,
        "at": a.at.isoformat(),
        "started_at": a.started_at.isoformat() if a.started_at else None,
        "coverage": a.coverage,
        "coverage_since": a.coverage_since.isoformat() if a.coverage_since else None,
        "config_checksum": a.config_checksum,
        "control": a.control,
        "units": dict(a.units),
        "weights": dict(a.weights),
        "srm": _srm_doc(a.srm),
        "sequential_srm": _srm_doc(a.sequential_srm),
        "comparisons": [comparison_to_dict(c) for c in a.comparisons],
        "final_look": a.final_look,
        "error": a.error,
        "state": dict(a.state),
    }
