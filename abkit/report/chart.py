"""The estimate and its confidence sequence over the looks, as server-side SVG geometry.

:func:`build_chart` turns one :class:`~abkit.services.views.Series` (the per-look snapshots) into
plain coordinates; ``templates/_chart.html`` draws them, escaped like any other template, so
the chart reads without JavaScript. x is the time of each look, y the effect on the scale the
worker tested, the band is the confidence sequence (an always-valid interval, so reading it at
every look is safe), with a zero line, the minimum effect (or a guardrail's tolerated harm) and
a marker at each allocation decision.

Unbounded ends (null in the snapshot, infinite here) and ends far outside the interesting range
run to the edge of the plot and the chart says so; one look is drawn as an error bar.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from abkit.core.decision import Action
from abkit.core.metrics import MetricKind
from abkit.core.snapshot import Role
from abkit.report import wording
from abkit.services.views import Series, SeriesPoint, TimelineEntry

WIDTH, HEIGHT = 760, 330
LEFT, RIGHT, TOP, BOTTOM = 84, 604, 26, 270
MAX_POINTS = 300
WHISKERS_UP_TO = 40
DOTS_UP_TO = 80
TIME_STEPS = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
    86400, 2 * 86400, 7 * 86400, 14 * 86400, 28 * 86400,
)  # fmt: skip
MARKED = {
    Action.PROMOTE.value: "promoted",
    Action.ROLLBACK.value: "rolled back",
    Action.STOP_INCONCLUSIVE.value: "stopped",
}


@dataclass(frozen=True, slots=True)
class Tick:
    at: float
    label: str


@dataclass(frozen=True, slots=True)
class Rule:
    """A labelled reference line: ``kind`` is zero, effect, harm, decision or ramp."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str
    kind: str
    label_y: float = 0.0


@dataclass(frozen=True, slots=True)
class Dot:
    x: float
    y: float
    low: float
    high: float
    title: str
    decided: bool
    shown: bool = True
    """Drawn as a dot: every look of a short series; else only decided looks and the latest."""


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    description: str
    x_label: str
    y_label: str
    band: str
    line: str
    dots: tuple[Dot, ...]
    whiskers: bool
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    rules: tuple[Rule, ...]
    markers: tuple[Rule, ...]
    clipped: bool
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = RIGHT
    top: int = TOP
    bottom: int = BOTTOM


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _thin(points: Sequence[SeriesPoint], keep: set[int]) -> list[SeriesPoint]:
    """At most about MAX_POINTS points, evenly spaced, always the last and the decided looks."""
    if len(points) <= MAX_POINTS:
        return list(points)
    every = math.ceil(len(points) / MAX_POINTS)
    last = len(points) - 1
    return [p for i, p in enumerate(points) if i % every == 0 or i == last or p.look in keep]


def _nice(step: float) -> float:
    exponent = math.floor(math.log10(step))
    fraction = step / 10**exponent
    nice = 1 if fraction <= 1 else 2 if fraction <= 2 else 2.5 if fraction <= 2.5 else 5
    return float((nice if fraction <= 5 else 10) * 10**exponent)


def _y_domain(points: Sequence[SeriesPoint], references: Sequence[float]) -> tuple[float, float]:
    last = points[-1]
    core = _finite([p.estimate for p in points] + [0.0, *references, last.low, last.high])
    full = core + _finite([v for p in points for v in (p.low, p.high)])
    low, high = min(full), max(full)
    core_low, core_high = min(core), max(core)
    span = core_high - core_low
    if span > 0 and high - low > 4 * span:
        # Early looks have very wide sequences; keep the recent picture readable.
        low, high = max(low, core_low - 1.5 * span), min(high, core_high + 1.5 * span)
    if high - low <= 0:
        pad = abs(high) / 2 or 0.01
        low, high = low - pad, high + pad
    pad = 0.06 * (high - low)
    return low - pad, high + pad


def _y_ticks(
    low: float, high: float, kind: MetricKind | None, relative: bool
) -> list[tuple[float, str]]:
    step = _nice((high - low) / 5)
    scale = 100.0 if relative or kind == MetricKind.BINARY else 1.0
    decimals = max(0, -math.floor(math.log10(step * scale) + 1e-9))
    ticks = []
    value = math.ceil(low / step) * step
    while value <= high + 1e-12:
        v = 0.0 if abs(value) < step / 1e6 else value
        label = (
            wording.effect(v, kind, relative, decimals=decimals)
            if scale != 1.0
            else f"{v:+.{decimals}f}".replace("-", "−")
        )
        ticks.append((v, "0" if v == 0 else label))
        value += step
    return ticks


def _x_ticks(start: float, end: float) -> list[tuple[float, str]]:
    span = end - start
    step = next((s for s in TIME_STEPS if span / s <= 6), TIME_STEPS[-1])
    if step >= 86400:
        pattern = "%d %b"
    elif span > 86400:
        pattern = "%d %b %H:%M"
    else:
        pattern = "%H:%M" if step >= 60 else "%H:%M:%S"
    ticks: list[tuple[float, str]] = []
    t = float(math.ceil(start / step) * step)
    while t <= end:
        ticks.append((t, datetime.fromtimestamp(t, UTC).strftime(pattern)))
        t += step
    return ticks


def build_chart(series: Series, decisions: Sequence[TimelineEntry] = ()) -> Chart | None:
    """The chart of one comparison, or None when no look has an estimate yet."""
    c = series.latest
    marks = [d for d in decisions if d.action in MARKED or d.action == Action.RAMP]
    decided = {d.look for d in marks if d.look is not None}
    points = [p for p in _thin(series.points, decided) if math.isfinite(p.estimate)]
    if not points:
        return None
    kind, relative = c.kind, c.tested_relative
    sign = c.direction.sign
    references: list[tuple[float, str, str]] = [(0.0, "no difference", "zero")]
    if c.role is Role.PRIMARY and c.minimum_effect > 0:
        mde = sign * c.minimum_effect
        references.append((mde, f"minimum effect {wording.effect(mde, kind, relative)}", "effect"))
    if c.role is Role.GUARDRAIL and c.margin:
        harm = -sign * c.margin
        references.append((harm, f"tolerated harm {wording.effect(harm, kind, relative)}", "harm"))
    low, high = _y_domain(points, [r[0] for r in references])

    times = [p.at.timestamp() for p in points]
    mark_times = [d.decided_at.timestamp() for d in marks]
    first = min(times + mark_times)
    last = max(times + mark_times)
    pad = 0.04 * (last - first) if last > first else 60.0
    start, end = first - pad, last + pad

    def x(t: float) -> float:
        return round(LEFT + (t - start) / (end - start) * (RIGHT - LEFT), 1)

    clipped = False

    def y(v: float) -> float:
        nonlocal clipped
        if v > high or v < low:
            clipped = True
            v = high if v > high else low
        return round(BOTTOM - (v - low) / (high - low) * (BOTTOM - TOP), 1)

    dots = tuple(
        Dot(
            x(t),
            y(p.estimate),
            y(p.low),
            y(p.high),
            _dot_title(p, kind, relative),
            p.look in decided,
        )
        for t, p in zip(times, points, strict=True)
    )
    if len(dots) > DOTS_UP_TO:
        last = len(dots) - 1
        dots = tuple(replace(d, shown=d.decided or i == last) for i, d in enumerate(dots))
    upper = [f"{d.x},{d.high}" for d in dots]
    lower = [f"{d.x},{d.low}" for d in reversed(dots)]
    band = " ".join(upper + lower) if len(dots) > 1 else ""
    line = " ".join(f"{d.x},{d.y}" for d in dots)
    rules = _spread([Rule(LEFT, y(v), RIGHT, y(v), text, k) for v, text, k in references])
    markers = tuple(
        Rule(
            x(t),
            TOP,
            x(t),
            BOTTOM,
            _mark_label(d),
            "ramp" if d.action == Action.RAMP else "decision",
        )
        for t, d in zip(mark_times, marks, strict=True)
    )
    latest = points[-1]
    level = wording.level(c.alpha)
    unit = (
        " (relative)" if relative else " (percentage points)" if kind == MetricKind.BINARY else ""
    )
    return Chart(
        title=f"{c.metric}: {c.arm} against control",
        description=(
            f"{c.metric}, {c.arm} minus control, over {len(series.points)} looks: latest estimate "
            f"{wording.effect(latest.estimate, kind, relative)} with a {level} confidence "
            f"sequence from {wording.effect(latest.low, kind, relative)} to "
            f"{wording.effect(latest.high, kind, relative)}."
        ),
        x_label="time of look (UTC)",
        y_label=f"{c.arm} − control{unit}",
        band=band,
        line=line,
        dots=dots,
        whiskers=len(dots) <= WHISKERS_UP_TO,
        x_ticks=tuple(Tick(x(t), label) for t, label in _x_ticks(start, end)),
        y_ticks=tuple(Tick(y(v), label) for v, label in _y_ticks(low, high, kind, relative)),
        rules=rules,
        markers=markers,
        clipped=clipped,
    )


def _spread(rules: list[Rule], gap: float = 13.0) -> tuple[Rule, ...]:
    """Labels at their line's height, pushed apart when lines are closer than ``gap``."""
    placed: list[Rule] = []
    for rule in sorted(rules, key=lambda r: r.y1):
        label_y = rule.y1 if not placed else max(rule.y1, placed[-1].label_y + gap)
        placed.append(replace(rule, label_y=label_y))
    return tuple(placed)


def _dot_title(p: SeriesPoint, kind: MetricKind | None, relative: bool) -> str:
    effect = wording.effect(p.estimate, kind, relative)
    low, high = wording.effect(p.low, kind, relative), wording.effect(p.high, kind, relative)
    return f"look {p.look}, {wording.when(p.at)}: {effect} [{low}, {high}], {p.units:,} units"


def _mark_label(d: TimelineEntry) -> str:
    if d.action == Action.RAMP:
        return "ramp"
    return f"{MARKED[d.action]} {d.arm}" if d.arm else MARKED[d.action]
