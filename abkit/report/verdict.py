"""The verdict banner: what a product owner reads first -- who is winning, how sure we are,
what was decided and why. One small function per state of the experiment, tried in order."""

from __future__ import annotations

import math
from dataclasses import dataclass

from abkit.core.decision import Action
from abkit.core.model import ExperimentStatus
from abkit.core.snapshot import Role
from abkit.report.wording import lift_sentence, when
from abkit.services.views import ComparisonView, ExperimentResults, LookView


@dataclass(frozen=True, slots=True)
class Verdict:
    """The banner: ``tone`` is good, bad, warn, neutral or info; ``title`` one short sentence."""

    tone: str
    title: str
    details: tuple[str, ...]


DRAFT = Verdict("info", "Draft: not started yet", ("Nobody is in the experiment yet.",))
PAUSED = Verdict(
    "warn",
    "Paused: everyone gets the control model",
    ("Nothing is logged while paused; resume to continue the experiment.",),
)
NO_POLICY = Verdict(
    "info",
    "Running without a decision policy",
    ("No statistics are computed and nothing is decided automatically; add a policy "
     "to the experiment file to get results here.",),
)  # fmt: skip
FIRST_LOOK = Verdict("info", "Running: waiting for the first look", ())


def verdict(r: ExperimentResults) -> Verdict:
    """The banner for ``r`` (a concluded experiment, a state, or the latest look's numbers)."""
    if r.status is ExperimentStatus.CONCLUDED:
        return _concluded(r)
    if r.status is ExperimentStatus.DRAFT:
        return DRAFT
    if r.status is ExperimentStatus.PAUSED:
        return PAUSED
    if r.policy is None:
        return NO_POLICY
    if r.look is None:
        return FIRST_LOOK
    return _running(r, r.look)


def _running(r: ExperimentResults, look: LookView) -> Verdict:
    waiting = tuple(f"Latest look ({look.look}): {reason}." for reason in look.reasons)
    if look.action == Action.HOLD:
        return Verdict("warn", "Holding: nothing changes until a person looks", waiting)
    if look.srm is not None and look.srm.mismatch:
        return Verdict("bad", "The traffic split is broken (sample ratio mismatch)", waiting)
    ok = _primary(r)
    if not ok or any(a.units < look.min_units_per_arm for a in r.arms):
        units = ", ".join(f"{a.key} {a.units:,}" for a in r.arms)
        need = f"; each arm needs {look.min_units_per_arm:,}" if look.min_units_per_arm else ""
        early = tuple(lift_sentence(c) + " (too early to read)." for c in ok)
        return Verdict(
            "info", "Not enough data yet", (f"Units so far: {units}{need}.", *early, *waiting)
        )
    best = max(ok, key=_lead)
    arm = r.arm(best.arm)
    who = f"{best.arm} ({arm.model_version})" if arm is not None else best.arm
    detail = (lift_sentence(best) + ".", *waiting)
    if best.better:
        return Verdict("good", f"{who} is winning on {best.metric}", detail)
    losing = [c for c in ok if c.worse]
    if losing:
        return Verdict("bad", f"{losing[0].arm} is losing on {best.metric}", detail)
    lead = _lead(best)
    if lead > 0:
        title = f"{who} is ahead on {best.metric}, but it is too early to call"
    elif lead < 0:
        title = f"No clear winner yet: control is ahead on {best.metric}"
    else:
        title = f"No clear winner yet: no difference in {best.metric} so far"
    return Verdict("neutral", title, detail)


def _primary(r: ExperimentResults) -> list[ComparisonView]:
    """The primary comparisons that carry evidence."""
    return [c for c in r.comparisons if c.role is Role.PRIMARY and c.ok]


def _lead(c: ComparisonView) -> float:
    """How far the arm is ahead the good way (on the tested scale); -inf when unknown."""
    value = c.tested.value
    return -math.inf if math.isnan(value) else c.direction.sign * value


def _concluded(r: ExperimentResults) -> Verdict:
    d = r.decision
    rollout = r.arm(r.rollout_arm)
    version = rollout.model_version if rollout is not None else (r.rollout_arm or "?")
    primary = _primary(r)
    chosen = next((c for c in primary if c.arm == r.rollout_arm), primary[0] if primary else None)
    details: tuple[str, ...] = (lift_sentence(chosen) + ".",) if chosen is not None else ()
    if d is not None:
        details += tuple(f"Why: {reason}." for reason in d.reasons)
        details += (f"Decided {when(d.decided_at)} by {d.actor}.",)
    if rollout is not None and not rollout.control:
        return Verdict("good", f"Promoted {rollout.key}: everyone now gets {version}", details)
    if d is not None and d.action == Action.ROLLBACK:
        return Verdict("bad", f"Rolled back: everyone gets {version} (control)", details)
    return Verdict("neutral", f"Stopped without a winner: {version} (control) stays", details)
