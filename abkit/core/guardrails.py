"""A guardrail metric's tests at one look: harm, non-inferiority, and the interval to show.

Two one-sided always-valid tests at the policy's ``alpha``, each with its own running state
(:mod:`abkit.core.stats.sequential`, one-sided normal mixture):

* *harm* -- ``H1``: the metric moved the bad way by more than ``margin``. Its null sits at the
  margin, so an unharmed guardrail almost never trips it;
* *non-inferiority* -- ``H1``: it did not move the bad way by ``margin`` or more. Requiring every
  guardrail to pass before promoting is an intersection-union test (Berger 1982), so no
  multiplicity correction is needed there.

A third, two-sided sequence gives the interval the page shows.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

from abkit.core.policy import Direction, Guardrail, Policy
from abkit.core.primary import empty, n_star, uses_cuped
from abkit.core.snapshot import Comparison, MonitorStates, Role
from abkit.core.stats import MonitorState, SequentialMonitor, Summary, TestResult


def guardrail(
    guard: Guardrail,
    policy: Policy,
    by_arm: Mapping[str, Summary],
    control: str,
    arm: str,
    before: MonitorStates,
    after: MutableMapping[str, MonitorState],
) -> Comparison:
    metric = guard.metric
    c_summary = by_arm.get(control) or empty(metric)
    t_summary = by_arm.get(arm) or empty(metric)
    m = guard.margin
    harm, safe, interval = _tests(guard, policy, c_summary, t_summary, arm, before, after)
    return Comparison(
        metric=metric.name,
        role=Role.GUARDRAIL,
        arm=arm,
        n_control=c_summary.n,
        n_treatment=t_summary.n,
        control_mean=c_summary.mean,
        treatment_mean=t_summary.mean,
        relative=guard.relative,
        estimate=interval.estimate,
        ci_low=interval.ci_low,
        ci_high=interval.ci_high,
        p_value=interval.p_value,
        status=interval.status,
        method=interval.method,
        alpha=policy.alpha,
        direction=guard.direction,
        margin=m,
        harm_p_value=harm.p_value,
        harmed=harm.ok and harm.p_value < policy.alpha,
        non_inferiority_p_value=safe.p_value,
        non_inferior=safe.ok and safe.p_value < policy.alpha,
    )


def _tests(
    guard: Guardrail,
    policy: Policy,
    control: Summary,
    treatment: Summary,
    arm: str,
    before: MonitorStates,
    after: MutableMapping[str, MonitorState],
) -> tuple[TestResult, TestResult, TestResult]:
    """Harm, non-inferiority and the two-sided interval, each continuing its own state."""
    metric, m = guard.metric, guard.margin
    # Harm is a move the bad way: down for an increase-is-good metric, up otherwise.
    if guard.direction is Direction.INCREASE:
        null, harm_side, safe_side = -m, "less", "greater"
    else:
        null, harm_side, safe_side = m, "greater", "less"
    # (null, sides, alternative) of each test; the interval is the default two-sided one.
    tests = (
        ("harm", null, 1, harm_side),
        ("non_inferiority", null, 1, safe_side),
        ("interval", 0.0, 2, "greater"),
    )
    results = []
    for test, test_null, sides, alternative in tests:
        key = f"{metric.name}/{arm}/{test}"
        monitor = SequentialMonitor(
            alpha=policy.alpha,
            n_star=n_star(policy),
            null=test_null,
            sides=sides,
            relative=guard.relative,
            cuped=uses_cuped(policy, metric),
            alternative=alternative,
            state=before.sequential.get(key),
        )
        results.append(monitor.update(control, treatment))
        after[key] = monitor.state
    harm, safe, interval = results
    return harm, safe, interval
