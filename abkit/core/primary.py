"""The primary metric's test at one look, one function per mode.

With ``k`` treatment arms each arm is tested at ``alpha / k`` (Bonferroni across arms):

* :func:`always_valid` -- a two-sided normal-mixture confidence sequence (Howard, Ramdas,
  McAuliffe & Sekhon 2021, eq. (14); see :mod:`abkit.core.stats.sequential`), with the running
  intersection of intervals and the running minimum p-value kept across looks;
* :func:`group_sequential` -- a Lan-DeMets alpha-spending design over ``max_units`` (Lan &
  DeMets 1983; :mod:`abkit.core.stats.group_sequential_monitor`): the repeated confidence
  interval ``est +- c_k se`` (Jennison & Turnbull 2000, ch. 9) and the boundary ``c_k``.

The comparison says ``better`` when the whole interval lies beyond ``minimum_effect`` on the
good side, ``worse`` when it lies below zero -- both on the direction-adjusted interval.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping

from abkit.core.metrics import Metric, MetricKind
from abkit.core.policy import Policy
from abkit.core.snapshot import Comparison, MonitorStates, Role
from abkit.core.stats import (
    DEFAULT_N_STAR,
    ArmSummary,
    GroupSequentialMonitor,
    GroupSequentialState,
    Method,
    MonitorState,
    RatioSummary,
    SequentialMonitor,
    Summary,
    TestStatus,
)


def empty(metric: Metric) -> Summary:
    """The summary of an arm without units, in the metric's shape."""
    return (
        RatioSummary(0, 0, 0, 0, 0, 0) if metric.kind is MetricKind.RATIO else ArmSummary(0, 0, 0)
    )


def n_star(policy: Policy) -> float:
    """The sample size the mixture is tuned for: the planned units, else the default."""
    return float(policy.max_units) if policy.max_units else DEFAULT_N_STAR


def uses_cuped(policy: Policy, metric: Metric) -> bool:
    return policy.cuped_lookback_seconds is not None and metric.kind is not MetricKind.RATIO


def always_valid(
    policy: Policy,
    arm: str,
    control: Summary,
    treatment: Summary,
    alpha: float,
    before: MonitorStates,
    after: MutableMapping[str, MonitorState],
) -> Comparison:
    metric = policy.primary.metric
    key = f"{metric.name}/{arm}"
    monitor = SequentialMonitor(
        alpha=alpha,
        n_star=n_star(policy),
        relative=policy.primary.relative,
        cuped=uses_cuped(policy, metric),
        state=before.sequential.get(key),
    )
    r = monitor.update(control, treatment)
    after[key] = monitor.state
    return comparison(
        policy,
        arm,
        control,
        treatment,
        alpha,
        status=r.status,
        estimate=r.estimate,
        ci=(r.ci_low, r.ci_high),
        p_value=r.p_value,
        method=r.method,
        significant=r.ok and r.p_value < alpha,
    )


def group_sequential(
    policy: Policy,
    arm: str,
    control: Summary,
    treatment: Summary,
    alpha: float,
    before: MonitorStates,
    after: MutableMapping[str, GroupSequentialState],
) -> tuple[Comparison, bool]:
    """The comparison, and whether this is the design's final look (``max_units`` reached)."""
    metric = policy.primary.metric
    key = f"{metric.name}/{arm}"
    max_units = policy.max_units or 0  # policy_from_dict requires it in this mode
    monitor = GroupSequentialMonitor(
        max_units,
        alpha=alpha,
        spending=policy.spending,
        relative=policy.primary.relative,
        cuped=uses_cuped(policy, metric),
        state=before.group_sequential.get(key),
    )
    n_total = control.n + treatment.n
    final = n_total >= max_units
    result = monitor.update(control, treatment, final=final) if n_total else None
    after[key] = monitor.state
    if result is None or result.status is not TestStatus.OK:
        status = TestStatus.NOT_ENOUGH_DATA if result is None else result.status
        return comparison(policy, arm, control, treatment, alpha, status=status), False
    primary = comparison(
        policy,
        arm,
        control,
        treatment,
        alpha,
        status=TestStatus.OK,
        estimate=result.estimate,
        ci=(result.ci_low, result.ci_high),
        p_value=result.nominal_p_value,
        method=Method.GROUP_SEQUENTIAL,
        boundary=result.boundary,
        information_fraction=result.information_fraction,
        significant=result.reject,
    )
    return primary, final


def comparison(
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
    method: Method | None = None,
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
        role=Role.PRIMARY,
        arm=arm,
        n_control=control.n,
        n_treatment=treatment.n,
        control_mean=control.mean,
        treatment_mean=treatment.mean,
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
