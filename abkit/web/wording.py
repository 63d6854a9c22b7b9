"""Numbers and sentences for people: percents, intervals, p-values and the verdict banner.

Conventions (also the README's): a *binary* metric's means are rates (``10.1%``) and its
absolute lift is in percentage points (``+3.7 pp``); a relative lift is a percent of the control
mean (``+36%``); other metrics use three significant digits. Unbounded interval ends (null in
snapshots) read ``−∞`` / ``+∞``; unknown values read ``—``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from abkit.results import ComparisonView, Effect, ExperimentResults

DASH = "—"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The banner: ``tone`` is good, bad, warn, neutral or info; ``title`` one short sentence."""

    tone: str
    title: str
    details: tuple[str, ...]


def _scaled(value: float, scale: float, decimals: int | None, sign: bool) -> str:
    v = value * scale
    if decimals is None:
        size = abs(v)
        decimals = 0 if size >= 100 else 1 if size >= 1 else 2 if size >= 0.01 or v == 0 else 3
    text = f"{v:+.{decimals}f}" if sign else f"{v:.{decimals}f}"
    return text.replace("-", "−")


def effect(value: float, kind: str, relative: bool, *, decimals: int | None = None) -> str:
    """A lift: ``+36%`` (relative), ``+3.65 pp`` (binary, absolute) or ``+0.0123``."""
    if math.isnan(value):
        return DASH
    if math.isinf(value):
        return "+∞" if value > 0 else "−∞"
    if relative:
        return _scaled(value, 100.0, decimals, True) + "%"
    if kind == "binary":
        return _scaled(value, 100.0, decimals, True) + " pp"
    return f"{value:+.3g}".replace("-", "−")


def interval(e: Effect, kind: str, relative: bool) -> str:
    """``[+1.54 pp, +5.46 pp]``; ``≈`` in front when converted from the tested scale."""
    if math.isnan(e.low) and math.isnan(e.high):
        return DASH
    text = f"[{effect(e.low, kind, relative)}, {effect(e.high, kind, relative)}]"
    return text if e.exact else f"≈ {text}"


def mean(value: float, kind: str) -> str:
    if math.isnan(value) or math.isinf(value):
        return DASH
    if kind == "binary":
        return _scaled(value, 100.0, None, False) + "%"
    return f"{value:.4g}"


def p_value(value: float | None) -> str:
    if value is None or math.isnan(value):
        return DASH
    if value < 0.0001:
        return "< 0.0001"
    return f"{value:.2g}"


def count(value: int | float | None) -> str:
    return DASH if value is None else f"{value:,.0f}"


def share(value: float) -> str:
    return DASH if math.isnan(value) else f"{value:.0%}"


def duration(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return DASH
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def when(value: datetime | None) -> str:
    return DASH if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(value: datetime | None, now: datetime) -> str:
    if value is None:
        return DASH
    seconds = (now - value).total_seconds()
    return "just now" if seconds < 5 else f"{duration(seconds)} ago"


def running_time(r: ExperimentResults, now: datetime) -> str:
    if r.started_at is None:
        return "not started"
    return duration(((r.concluded_at or now) - r.started_at).total_seconds())


def level(alpha: float) -> str:
    """``95%`` for alpha 0.05 (``97.5%`` for 0.025)."""
    return DASH if math.isnan(alpha) else f"{(1 - alpha) * 100:.4g}%"


def boundary(c: ComparisonView) -> str:
    """The rule this comparison was judged by, in a few words."""
    if c.role == "guardrail":
        margin = effect(c.margin or 0.0, c.kind, c.tested_relative).lstrip("+")
        return f"one-sided, tolerated harm {margin}, α {c.alpha:g}"
    if c.method == "group_sequential" and c.boundary is not None:
        info = (
            f" at {c.information_fraction:.0%} of planned units" if c.information_fraction else ""
        )
        return f"|z| ≥ {c.boundary:.3g}{info}"
    return f"always-valid p < {c.alpha:.3g}"


def status(c: ComparisonView) -> str:
    """One or two words for a table cell."""
    if c.status != "ok":
        return c.status.replace("_", " ")
    if c.role == "guardrail":
        return "harmed" if c.harmed else "within margin" if c.non_inferior else "not shown yet"
    return "better" if c.better else "worse" if c.worse else "inconclusive"


def tone(c: ComparisonView) -> str:
    if c.status != "ok":
        return "info"
    if c.harmed or c.worse:
        return "bad"
    if c.better or (c.role == "guardrail" and c.non_inferior):
        return "good"
    return "neutral"


def lift_sentence(c: ComparisonView) -> str:
    """``conversion +3.65 pp (10.1% → 13.8%); 95% sure it is between +1.54 pp and +5.46 pp``."""
    t = c.tested
    lift = effect(t.value, c.kind, c.tested_relative)
    means = f"{mean(c.control_mean, c.kind)} → {mean(c.treatment_mean, c.kind)}"
    low, high = effect(t.low, c.kind, c.tested_relative), effect(t.high, c.kind, c.tested_relative)
    return (
        f"{c.metric} {lift} in {c.arm} ({means}); we are {level(c.alpha)} sure the true effect "
        f"is between {low} and {high}"
    )


def verdict(r: ExperimentResults) -> Verdict:
    """What a product owner reads first: who is winning, how sure we are, what was decided."""
    if r.status == "concluded":
        return _concluded(r)
    if r.status == "draft":
        return Verdict("info", "Draft: not started yet", ("Nobody is in the experiment yet.",))
    if r.status == "paused":
        return Verdict(
            "warn",
            "Paused: everyone gets the control model",
            ("Nothing is logged while paused; resume to continue the experiment.",),
        )
    if not r.policy:
        return Verdict(
            "info",
            "Running without a decision policy",
            ("No statistics are computed and nothing is decided automatically; add a policy "
             "to the experiment file to get results here.",),
        )  # fmt: skip
    look = r.look
    if look is None:
        return Verdict("info", "Running: waiting for the first look", ())
    waiting = tuple(f"Latest look ({look.look}): {reason}." for reason in look.reasons)
    if look.action == "hold":
        return Verdict("warn", "Holding: nothing changes until a person looks", waiting)
    if look.srm is not None and look.srm.mismatch:
        return Verdict("bad", "The traffic split is broken (sample ratio mismatch)", waiting)
    ok = [c for c in r.comparisons if c.role == "primary" and c.status == "ok"]
    short = any(a.units < look.min_units_per_arm for a in r.arms)
    if not ok or short:
        units = ", ".join(f"{a.key} {a.units:,}" for a in r.arms)
        need = f"; each arm needs {look.min_units_per_arm:,}" if look.min_units_per_arm else ""
        early = tuple(lift_sentence(c) + " (too early to read)." for c in ok)
        return Verdict(
            "info", "Not enough data yet", (f"Units so far: {units}{need}.", *early, *waiting)
        )
    best = max(ok, key=lambda c: _good(c, c.tested.value))
    arm = r.arm(best.arm)
    who = f"{best.arm} ({arm.model_version})" if arm is not None else best.arm
    detail = (lift_sentence(best) + ".", *waiting)
    if best.better:
        return Verdict("good", f"{who} is winning on {best.metric}", detail)
    losing = [c for c in ok if c.worse]
    if losing:
        return Verdict("bad", f"{losing[0].arm} is losing on {best.metric}", detail)
    lead = _good(best, best.tested.value)
    if lead > 0:
        title = f"{who} is ahead on {best.metric}, but it is too early to call"
    elif lead < 0:
        title = f"No clear winner yet: control is ahead on {best.metric}"
    else:
        title = f"No clear winner yet: no difference in {best.metric} so far"
    return Verdict("neutral", title, detail)


def _good(c: ComparisonView, value: float) -> float:
    sign = -1.0 if c.direction == "decrease" else 1.0
    return -math.inf if math.isnan(value) else sign * value


def _concluded(r: ExperimentResults) -> Verdict:
    d = r.decision
    rollout = r.arm(r.rollout_arm)
    version = rollout.model_version if rollout is not None else (r.rollout_arm or "?")
    primary = [c for c in r.comparisons if c.role == "primary" and c.status == "ok"]
    chosen = next((c for c in primary if c.arm == r.rollout_arm), primary[0] if primary else None)
    details: tuple[str, ...] = (lift_sentence(chosen) + ".",) if chosen is not None else ()
    if d is not None:
        details += tuple(f"Why: {reason}." for reason in d.reasons)
        details += (f"Decided {when(d.decided_at)} by {d.actor}.",)
    if rollout is not None and not rollout.control:
        return Verdict("good", f"Promoted {rollout.key}: everyone now gets {version}", details)
    if d is not None and d.action == "rollback":
        return Verdict("bad", f"Rolled back: everyone gets {version} (control)", details)
    return Verdict("neutral", f"Stopped without a winner: {version} (control) stays", details)


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def results_text(r: ExperimentResults, now: datetime) -> str:
    """The detail page as plain text (``abkit results KEY``)."""
    v = verdict(r)
    lines = [
        f"{r.key} ({r.name or r.key}): {r.status}, model {r.model}, running {running_time(r, now)}",
        "",
        v.title,
        "=" * len(v.title),
        *(f"  - {d}" for d in v.details),
        "",
    ]
    arms = [("ARM", "MODEL VERSION", "WEIGHT", "UNITS")]
    arms += [(a.key, a.model_version, share(a.weight), count(a.units)) for a in r.arms]
    lines += [*_columns(arms), ""]
    if r.look is not None and r.look.srm is not None:
        srm = r.look.srm
        state = "MISMATCH" if srm.mismatch else srm.status.replace("_", " ")
        lines += [f"traffic split (SRM): {state}, sequential p = {p_value(srm.sequential_p_value)}"]
    control = next((a.key for a in r.arms if a.control), "control")
    for metric in dict.fromkeys((c.role, c.metric) for c in r.comparisons):
        rows = [c for c in r.comparisons if (c.role, c.metric) == metric]
        first = rows[0]
        lines += ["", f"{first.metric} ({first.role}{', ' + first.kind if first.kind else ''})"]
        table = [("ARM", "UNITS", "MEAN", "ABS LIFT", "INTERVAL", "REL LIFT", "INTERVAL", "P",
                  "BOUNDARY", "VERDICT")]  # fmt: skip
        table.append((control, count(first.n_control), mean(first.control_mean, first.kind),
                      "baseline", "", "", "", "", "", ""))  # fmt: skip
        for c in rows:
            p = c.p_value if c.role == "primary" else c.non_inferiority_p_value
            table.append(
                (
                    c.arm,
                    count(c.n_treatment),
                    mean(c.treatment_mean, c.kind),
                    effect(c.absolute.value, c.kind, False),
                    interval(c.absolute, c.kind, False),
                    effect(c.relative.value, c.kind, True),
                    interval(c.relative, c.kind, True),
                    p_value(p),
                    boundary(c),
                    status(c),
                )
            )
        lines += _columns(table)
    if r.look is None:
        lines += ["no look yet: numbers appear after the worker's first look"]
    return "\n".join(lines)
