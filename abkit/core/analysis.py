"""One look at an experiment: every test the policy needs, computed from sufficient statistics.

``analyze(...)`` is pure. It takes the cumulative per-arm summaries the store computed, the
policy, and the monitor state of the previous look, and returns an
:class:`~abkit.core.snapshot.Analysis`: per treatment arm and metric a comparison, the SRM checks,
and the monitor state the next look continues from. :func:`abkit.core.rules.decide` turns it
into a decision; the results page shows it as stored.

* **primary** -- by the policy's mode (:mod:`abkit.core.primary`): always valid, or group
  sequential; each treatment arm at ``alpha / k``;
* **guardrails** -- harm and non-inferiority, one-sided and always valid
  (:mod:`abkit.core.guardrails`);
* **SRM** -- Pearson chi-square (reported) and the sequential Dirichlet-multinomial test
  (decides: it stays valid at every look; :mod:`abkit.core.stats.srm`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from abkit.core.guardrails import guardrail
from abkit.core.model import Experiment
from abkit.core.policy import Mode, Policy
from abkit.core.primary import always_valid, empty, group_sequential
from abkit.core.snapshot import Analysis, Comparison, MonitorStates
from abkit.core.stats import (
    GroupSequentialState,
    MonitorState,
    SrmResult,
    Summary,
    sequential_srm_test,
    srm_test,
)

Summaries = Mapping[str, Mapping[str, Summary]]
"""``{metric name: {arm key: summary}}``, as the store computes them."""


def analyze(
    experiment: Experiment,
    policy: Policy,
    summaries: Summaries,
    previous: MonitorStates | None,
    *,
    look: int,
    at: datetime,
    started_at: datetime | None,
    coverage_since: datetime | None = None,
) -> Analysis:
    """Run every test of ``policy`` on one look's cumulative ``summaries``."""
    before = previous or MonitorStates()
    sequential: dict[str, MonitorState] = {}
    gs: dict[str, GroupSequentialState] = {}
    control = experiment.control.key
    treatments = [a.key for a in experiment.treatments]
    units = {a.key: _units(summaries, a.key) for a in experiment.arms}
    weights = {a.key: a.weight for a in experiment.arms}
    srm, sequential_srm = _srm(experiment, units, policy, before)
    alpha = policy.alpha / len(treatments)
    metric = policy.primary.metric
    by_arm = summaries.get(metric.name, {})
    c_summary = by_arm.get(control) or empty(metric)
    comparisons: list[Comparison] = []
    final_look = False
    for arm in treatments:
        t_summary = by_arm.get(arm) or empty(metric)
        if policy.mode is Mode.GROUP_SEQUENTIAL:
            primary, final = group_sequential(policy, arm, c_summary, t_summary, alpha, before, gs)
            final_look = final_look or final
        else:
            primary = always_valid(policy, arm, c_summary, t_summary, alpha, before, sequential)
        comparisons.append(primary)
        for guard in policy.guardrails:
            by_guard = summaries.get(guard.metric.name, {})
            comparisons.append(guardrail(guard, policy, by_guard, control, arm, before, sequential))
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
        state=MonitorStates(sequential, gs, sequential_srm.p_value),
        final_look=final_look,
    )


def failed(
    experiment: Experiment,
    *,
    look: int,
    at: datetime,
    error: str,
    previous: MonitorStates | None = None,
) -> Analysis:
    """The analysis of a look that could not be computed (the policy holds on it).

    The monitor state of the previous look is carried forward unchanged: a hold must not reset
    a group-sequential design's spent alpha or a confidence sequence's running intersection.
    """
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
        state=previous or MonitorStates(),
        error=error,
    )


def _srm(
    experiment: Experiment, units: Mapping[str, int], policy: Policy, before: MonitorStates
) -> tuple[SrmResult, SrmResult]:
    """Chi-square (reported) and sequential (decides) sample-ratio checks of the split."""
    counts = [units[a.key] for a in experiment.arms]
    weights = [a.weight for a in experiment.arms]
    chi2 = srm_test(counts, weights, threshold=policy.srm_alpha)
    sequential = sequential_srm_test(
        counts, weights, threshold=policy.srm_alpha, previous_p_value=before.srm_p_value
    )
    return chi2, sequential


def _units(summaries: Summaries, arm: str) -> int:
    for by_arm in summaries.values():
        if arm in by_arm:
            return by_arm[arm].n
    return 0
