"""Numbers and phrases for people: percents, intervals, p-values, a comparison in a few words.

Conventions (also the documentation's): a *binary* metric's means are rates (``10.1%``) and its
absolute lift is in percentage points (``+3.7 pp``); a relative lift is a percent of the control
mean (``+36%``); other metrics use three significant digits. Unbounded interval ends (null in
snapshots) read ``−∞`` / ``+∞``; unknown values read ``—``.
"""

from __future__ import annotations

import math
from datetime import datetime

from abkit.core import formatting
from abkit.core.metrics import MetricKind
from abkit.core.snapshot import Role
from abkit.core.stats import Method
from abkit.services.views import (
    ComparisonView,
    ExperimentResults,
    PendingRegistryChange,
    ScaledEffect,
)

DASH = "—"


def _scaled(value: float, scale: float, decimals: int | None, sign: bool) -> str:
    v = value * scale
    if decimals is None:
        size = abs(v)
        decimals = 0 if size >= 100 else 1 if size >= 1 else 2 if size >= 0.01 or v == 0 else 3
    text = f"{v:+.{decimals}f}" if sign else f"{v:.{decimals}f}"
    return text.replace("-", "−")


def effect(
    value: float, kind: MetricKind | None, relative: bool, *, decimals: int | None = None
) -> str:
    """A lift: ``+36%`` (relative), ``+3.65 pp`` (binary, absolute) or ``+0.0123``."""
    if math.isnan(value):
        return DASH
    if math.isinf(value):
        return "+∞" if value > 0 else "−∞"
    if relative:
        return _scaled(value, 100.0, decimals, True) + "%"
    if kind == MetricKind.BINARY:
        return _scaled(value, 100.0, decimals, True) + " pp"
    return f"{value:+.3g}".replace("-", "−")


def interval(e: ScaledEffect, kind: MetricKind | None, relative: bool) -> str:
    """``[+1.54 pp, +5.46 pp]``; ``≈`` in front when converted from the tested scale."""
    if math.isnan(e.low) and math.isnan(e.high):
        return DASH
    text = f"[{effect(e.low, kind, relative)}, {effect(e.high, kind, relative)}]"
    return text if e.exact else f"≈ {text}"


def mean(value: float, kind: MetricKind | None) -> str:
    if math.isnan(value) or math.isinf(value):
        return DASH
    if kind == MetricKind.BINARY:
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
    return formatting.duration(seconds)


def when(value: datetime | None) -> str:
    return DASH if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def registry_pending(p: PendingRegistryChange) -> str:
    """A registry change not done yet, in one line: ``MLflow alias change pending (attempt 3,
    last error: ...; next try ...): champion → models:/ranker/2``."""
    if p.attempts:
        error = f", last error: {p.last_error}" if p.last_error else ""
        tried = f"attempt {p.attempts}{error}; next try {when(p.next_attempt_at)}"
    else:
        tried = "not tried yet"
    return f"MLflow alias change pending ({tried}): {p.description}"


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
    if c.role is Role.GUARDRAIL:
        margin = effect(c.margin or 0.0, c.kind, c.tested_relative).lstrip("+")
        return f"one-sided, tolerated harm {margin}, α {c.alpha:g}"
    if c.method is Method.GROUP_SEQUENTIAL and c.boundary is not None:
        info = (
            f" at {c.information_fraction:.0%} of planned units" if c.information_fraction else ""
        )
        return f"|z| ≥ {c.boundary:.3g}{info}"
    return f"always-valid p < {c.alpha:.3g}"


def status(c: ComparisonView) -> str:
    """One or two words for a table cell."""
    if not c.ok:
        return c.status.value.replace("_", " ") if c.status is not None else "unknown"
    if c.role is Role.GUARDRAIL:
        return "harmed" if c.harmed else "within margin" if c.non_inferior else "not shown yet"
    return "better" if c.better else "worse" if c.worse else "inconclusive"


def tone(c: ComparisonView) -> str:
    if not c.ok:
        return "info"
    if c.harmed or c.worse:
        return "bad"
    if c.better or (c.role is Role.GUARDRAIL and c.non_inferior):
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
