"""The decision rules: ``decide(analysis, policy, now)``, one small function per rule.

``decide`` is pure. It tries the rules in order; the first that acts decides, and what the
others are waiting for becomes the reasons to continue:

1. **hold** -- the analysis could not be computed (store down, broken data): never act on
   missing data.
2. **rollback** (to control, for everyone) on a sample ratio mismatch: the split is broken, so
   no comparison can be trusted.
3. **hold** when a primary confidence sequence's running intersection became empty (the effect
   seems to change over time): a person should look.
4. **rollback** when the primary metric is significantly *worse* in a treatment arm, or
5. when a guardrail is significantly harmed beyond its margin (one-sided, always valid). Safety
   checks do not wait for the minimum duration.
6. **promote(arm)** when, for that arm, the primary metric's interval lies entirely on the good
   side beyond ``minimum_effect``, every guardrail is shown non-inferior (its one-sided bound is
   within the margin), the SRM check is clean, every arm has ``min_units_per_arm`` units and
   ``min_duration`` has passed. Several winners: the arm with the best guaranteed effect (the
   bound closest to the good side), each arm tested at a Bonferroni share of alpha.
7. **stop_inconclusive** (control for everyone) at ``max_duration`` -- or, in group-sequential
   mode, at the final planned look -- without a winner.
8. **ramp(coverage)** -- advance the coverage ramp one step when the current step has lasted
   ``ramp_step`` and no guardrail shows harm (no harm detected and no estimate beyond a margin).
9. **continue** otherwise, saying what it is waiting for.

Terminal decisions (promote, rollback, stop_inconclusive) conclude the experiment: they are
sticky, and the worker never looks at a concluded experiment again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from abkit.core import reasons
from abkit.core.decision import Action, Decision
from abkit.core.policy import Policy
from abkit.core.snapshot import Analysis
from abkit.core.stats import TestStatus


@dataclass(frozen=True, slots=True)
class Look:
    """What every rule reads: the analysis, the policy and the time of the decision."""

    analysis: Analysis
    policy: Policy
    now: datetime

    @property
    def elapsed(self) -> float:
        started = self.analysis.started_at
        if started is None:
            return self.analysis.elapsed_seconds
        return (self.now - started).total_seconds()

    @property
    def metric(self) -> str:
        return self.policy.primary.metric.name


Outcome = Decision | tuple[str, ...]
"""A rule either decides, or says what it is still waiting for (possibly nothing)."""
Rule = Callable[[Look], Outcome]


def hold_unanalysed(look: Look) -> Outcome:
    error = look.analysis.error
    return Decision(Action.HOLD, (reasons.unanalysed(error),)) if error else ()


def rollback_broken_split(look: Look) -> Outcome:
    srm = look.analysis.sequential_srm
    if srm is None or not srm.mismatch:
        return ()
    reason = reasons.split_broken(look.analysis, srm, look.policy)
    return Decision(Action.ROLLBACK, (reason,), arm=look.analysis.control)


def hold_diverged_sequences(look: Look) -> Outcome:
    diverged = [
        c for c in look.analysis.primary() if c.status is TestStatus.EMPTY_CONFIDENCE_SEQUENCE
    ]
    if not diverged:
        return ()
    return Decision(
        Action.HOLD, tuple(reasons.sequences_diverged(look.metric, c) for c in diverged)
    )


def rollback_worse(look: Look) -> Outcome:
    worse = [c for c in look.analysis.primary() if c.worse]
    if not worse:
        return ()
    return Decision(
        Action.ROLLBACK,
        tuple(reasons.worse(look.metric, c) for c in worse),
        arm=look.analysis.control,
    )


def rollback_harmed(look: Look) -> Outcome:
    harmed = [g for g in look.analysis.guardrails() if g.harmed]
    if not harmed:
        return ()
    return Decision(
        Action.ROLLBACK, tuple(reasons.harmed(g) for g in harmed), arm=look.analysis.control
    )


def promote(look: Look) -> Outcome:
    analysis, policy = look.analysis, look.policy
    waiting: list[str] = []
    winners = []
    for c in analysis.primary():
        if not c.better:
            continue
        blocking = [g for g in analysis.guardrails(c.arm) if not g.non_inferior]
        if blocking:
            waiting.append(reasons.non_inferiority_pending(look.metric, c, blocking))
        else:
            winners.append(c)
    if not winners:
        return tuple(waiting)
    short = {a: n for a, n in analysis.units.items() if n < policy.min_units_per_arm}
    if short:
        return (*waiting, reasons.units_pending(winners[0].arm, policy, short))
    if look.elapsed < policy.min_duration_seconds:
        return (*waiting, reasons.duration_pending(winners[0].arm, policy, look.elapsed))
    best = max(winners, key=lambda c: c.guaranteed)
    why = reasons.promoted(
        best, winners, analysis.guardrails(best.arm), analysis.sequential_srm, policy
    )
    return Decision(Action.PROMOTE, why, arm=best.arm)


def stop_at_the_end(look: Look) -> Outcome:
    if look.elapsed < look.policy.max_duration_seconds and not look.analysis.final_look:
        return ()
    why = reasons.stopped(look.policy, look.elapsed, look.analysis.primary(), look.metric)
    return Decision(Action.STOP_INCONCLUSIVE, why, arm=look.analysis.control)


def ramp(look: Look) -> Outcome:
    analysis, policy = look.analysis, look.policy
    coverage = analysis.coverage
    if not policy.ramp or coverage >= policy.ramp[-1]:
        return ()
    harm = [g for g in analysis.guardrails() if g.shows_harm]
    step = next(s for s in policy.ramp if s > coverage)
    since = analysis.coverage_since or analysis.started_at
    at_step = (look.now - since).total_seconds() if since is not None else 0.0
    if harm:
        return (reasons.ramp_held(coverage, harm),)
    if at_step >= policy.ramp_step_seconds:
        return Decision(Action.RAMP, (reasons.ramped(coverage, step, at_step),), coverage=step)
    return (reasons.next_ramp_step(coverage, step, policy, at_step),)


RULES: tuple[Rule, ...] = (
    hold_unanalysed,
    rollback_broken_split,
    hold_diverged_sequences,
    rollback_worse,
    rollback_harmed,
    promote,
    stop_at_the_end,
    ramp,
)


def keep_going(look: Look, waiting: list[str]) -> Decision:
    """Continue, saying what the rules wait for and where each primary comparison stands."""
    for c in look.analysis.primary():
        if c.status is not TestStatus.OK:
            waiting.append(reasons.not_enough_data(look.metric, c))
        elif not c.better:
            waiting.append(reasons.inconclusive(look.metric, c))
    return Decision(Action.CONTINUE, tuple(waiting) or ("collecting data",))


def decide(analysis: Analysis, policy: Policy, now: datetime) -> Decision:
    """The decision for one look (see the module docstring for the rules and their order)."""
    look = Look(analysis, policy, now)
    waiting: list[str] = []
    for rule in RULES:
        outcome = rule(look)
        if isinstance(outcome, Decision):
            return outcome
        waiting.extend(outcome)
    return keep_going(look, waiting)
