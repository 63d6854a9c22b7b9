"""The sentences a decision gives as its reasons: one function per situation the rules meet.

The rules (:mod:`abkit.core.rules`) decide; this module words it for the audit trail, the
results page and the webhook, in numbers a product owner can check against the page.
"""

from __future__ import annotations

from collections.abc import Sequence

from abkit.core import formatting
from abkit.core.policy import Policy
from abkit.core.snapshot import Analysis, Comparison
from abkit.core.stats import SrmResult


def interval(c: Comparison) -> str:
    """``+0.0326 [+0.0102, +0.0549]`` (or in percent for a relative lift)."""
    low, high = formatting.signed(c.ci_low, c.relative), formatting.signed(c.ci_high, c.relative)
    return f"{formatting.signed(c.estimate, c.relative)} [{low}, {high}]"


def unanalysed(error: str) -> str:
    return f"holding, nothing changes: the look could not be analysed ({error})"


def split_broken(analysis: Analysis, srm: SrmResult, policy: Policy) -> str:
    units = ", ".join(f"{arm} {n:,}" for arm, n in analysis.units.items())
    weights = ", ".join(f"{arm} {w:g}" for arm, w in analysis.weights.items())
    return (
        f"sample ratio mismatch: units {units} do not fit the weights {weights} "
        f"(sequential SRM p = {srm.p_value:.2g} < {policy.srm_alpha:g}); the split is "
        "broken, so no comparison can be trusted"
    )


def sequences_diverged(metric: str, c: Comparison) -> str:
    return (
        f"{metric} in {c.arm}: the confidence sequences of successive looks no longer "
        "overlap (the effect seems to change over time); holding for a human to look"
    )


def worse(metric: str, c: Comparison) -> str:
    return (
        f"primary metric {metric} is significantly worse in {c.arm}: {interval(c)} "
        f"(p = {c.p_value:.2g} < {c.alpha:.3g})"
    )


def harmed(g: Comparison) -> str:
    return (
        f"guardrail {g.metric} is harmed in {g.arm} beyond its margin of "
        f"{formatting.magnitude(g.margin or 0.0, g.relative)}: {interval(g)} "
        f"(one-sided p = {g.harm_p_value:.2g} < {g.alpha:g})"
    )


def non_inferiority_pending(metric: str, c: Comparison, blocking: Sequence[Comparison]) -> str:
    return (
        f"{c.arm} wins on {metric} ({interval(c)}) but non-inferiority is not shown yet "
        f"for {', '.join(f'{g.metric} ({interval(g)})' for g in blocking)}"
    )


def units_pending(arm: str, policy: Policy, short: dict[str, int]) -> str:
    return (
        f"{arm} is winning but arms need {policy.min_units_per_arm:,} units "
        f"each ({', '.join(f'{a} has {n:,}' for a, n in short.items())})"
    )


def duration_pending(arm: str, policy: Policy, elapsed: float) -> str:
    return (
        f"{arm} is winning but the minimum duration "
        f"{formatting.duration(policy.min_duration_seconds)} is not reached "
        f"({formatting.duration(elapsed)})"
    )


def promoted(
    best: Comparison,
    winners: Sequence[Comparison],
    guards: Sequence[Comparison],
    srm: SrmResult | None,
    policy: Policy,
) -> tuple[str, ...]:
    minimum = formatting.magnitude(policy.primary.minimum_effect, policy.primary.relative)
    reasons = [
        f"{best.metric} improved in {best.arm}: {interval(best)}, beyond the minimum effect "
        f"{minimum} (p = {best.p_value:.2g} < {best.alpha:.3g})"
    ]
    if guards:
        reasons.append(
            "guardrails non-inferior: " + ", ".join(f"{g.metric} {interval(g)}" for g in guards)
        )
    if srm is not None:
        reasons.append(f"SRM clean (p = {srm.p_value:.2g})")
    if len(winners) > 1:
        others = ", ".join(w.arm for w in winners if w is not best)
        reasons.append(f"chosen over {others} for the larger guaranteed effect")
    return tuple(reasons)


def stopped(
    policy: Policy, elapsed: float, primaries: Sequence[Comparison], metric: str
) -> tuple[str, ...]:
    why = (
        f"the maximum duration {formatting.duration(policy.max_duration_seconds)} is reached"
        if elapsed >= policy.max_duration_seconds
        else f"the final planned look ({policy.max_units or 0:,} units) is reached"
    )
    return (
        f"{why} without a winner, so control stays",
        *(f"{metric} in {c.arm}: {interval(c)}, p = {c.p_value:.2g}" for c in primaries),
    )


def ramp_held(coverage: float, harm: Sequence[Comparison]) -> str:
    return f"ramp held at {coverage:.0%}: " + ", ".join(
        f"guardrail {g.metric} in {g.arm} {interval(g)}" for g in harm
    )


def ramped(coverage: float, step: float, at_step: float) -> str:
    return (
        f"coverage {coverage:.0%} -> {step:.0%} after {formatting.duration(at_step)}: "
        "no guardrail shows harm"
    )


def next_ramp_step(coverage: float, step: float, policy: Policy, at_step: float) -> str:
    return (
        f"next ramp step {step:.0%} after {formatting.duration(policy.ramp_step_seconds)} at "
        f"{coverage:.0%} ({formatting.duration(at_step)} so far)"
    )


def not_enough_data(metric: str, c: Comparison) -> str:
    status = c.status.value if c.status is not None else "unknown"
    return f"{metric} in {c.arm}: not enough data yet ({status})"


def inconclusive(metric: str, c: Comparison) -> str:
    return f"{metric} in {c.arm}: {interval(c)}, p = {c.p_value:.2g}; not conclusive yet"
