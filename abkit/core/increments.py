"""Maintained sufficient statistics: per (arm, day) changes, added up look after look.

A look used to re-read every exposure and event of the experiment. The statistics it needs are
sums over units (``n``, ``sum y``, ``sum y**2``, the CUPED and ratio cross-moments), so they can
be kept up to date exactly (docs/design.md, "Incremental looks"): when a unit's value goes
from ``y`` to ``y + a``, ``sum`` gains ``a`` and ``sum_sq`` gains ``(y + a)**2 - y**2``.

What "new" means is the order of **ingestion**, not event time: every exposure and event row has
a number (``seq``) drawn when it is stored, and the state records how far it has read
(:class:`Watermark`). The store computes, for the units a change touches, each unit's
contribution at the new watermark minus its contribution at the old one
(:mod:`abkit.store.increments`), as :class:`DayChange` rows: ``n`` and the CUPED terms on the
unit's exposure day, the other sums on the days its value changed. Summed over days they give
the look's totals (:func:`totals`); accumulated over days, the chart's series (:func:`series`).
A look keeps only the totals up to date (an :data:`UNDATED` row per arm: cheaper than days),
the first one from the full recomputation's totals (:func:`undated`: exactly the cost of a look
before); the per-day rows catch up, from their own watermark, when the series is asked for.
Late events, windows, erasure: all are differences of the same two contributions, so the state
equals a full recomputation up to floating-point rounding (:func:`differences` checks it).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import date
from typing import Any

from abkit.core.metrics import Metric, MetricKind
from abkit.core.stats import ArmSummary, RatioSummary, Summary

RELATIVE_TOLERANCE = 1e-9
"""Maintained and recomputed numbers agree to this (relative; absolute near zero)."""


@dataclass(frozen=True, slots=True, order=True)
class Watermark:
    """Ingestion numbers up to which (inclusive) exposures and events are counted."""

    exposures: int = 0
    events: int = 0

    def covers(self, other: Watermark) -> bool:
        return self.exposures >= other.exposures and self.events >= other.events

    def drawn_since(self, before: Watermark) -> int:
        """How many numbers were drawn after ``before`` up to this watermark, exposures and
        events (of every experiment) together: an upper bound on the rows that arrived (a
        rolled-back insert leaves its number unused), which is all choosing a plan needs --
        counting the rows instead read the ``seq`` indexes, about a second at 500 k new events.
        """
        return max(0, self.exposures - before.exposures) + max(0, self.events - before.events)


@dataclass(frozen=True, slots=True)
class DailySummaries:
    """Cumulative statistics at the end of ``day`` (UTC): units exposed and events up to then."""

    day: date
    arms: Mapping[str, Summary]


@dataclass(frozen=True, slots=True)
class DayChange:
    """The change of one arm's sums attributed to one UTC day (``YYYY-MM-DD``).

    ``events`` counts attributed events (after exposure, in the window): a day belongs to the
    series when some arm exposed a unit or attributed an event on it.
    """

    arm: str
    day: str
    n: int = 0
    s: float = 0.0
    ss: float = 0.0
    xs: float = 0.0
    xss: float = 0.0
    xys: float = 0.0
    ds: float = 0.0
    dss: float = 0.0
    nds: float = 0.0
    events: int = 0

    def plus(self, other: DayChange) -> DayChange:
        return DayChange(
            self.arm,
            self.day,
            *(getattr(self, f) + getattr(other, f) for f in SUMS),
        )

    @property
    def empty(self) -> bool:
        return all(getattr(self, f) == 0 for f in SUMS)


SUMS = tuple(f.name for f in fields(DayChange))[2:]
"""The additive fields of :class:`DayChange`, in order."""


@dataclass(frozen=True, slots=True)
class MetricState:
    """One metric definition's maintained state: the totals' watermark, the per-day rows'
    watermark (``dated``, at or behind it), the write version and the rows."""

    metric: Metric
    watermark: Watermark
    version: int
    days: tuple[DayChange, ...]
    dated: Watermark = Watermark()


def metric_to_dict(metric: Metric) -> dict[str, Any]:
    return {
        "name": metric.name,
        "kind": metric.kind.value,
        "event": metric.event,
        "denominator": metric.denominator,
        "window_seconds": metric.window_seconds,
        "cuped_lookback_seconds": metric.cuped_lookback_seconds,
    }


def metric_from_dict(doc: Mapping[str, Any]) -> Metric:
    fields: dict[str, Any] = {k: doc.get(k) for k in metric_to_dict(Metric("m", MetricKind.COUNT))}
    return Metric(**fields)


def metric_key(metric: Metric) -> str:
    """A stable name of the definition: the same definition always maps to the same state, and
    any change (window, CUPED, events) to a new one, computed from the start."""
    text = json.dumps(metric_to_dict(metric), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


UNDATED = ""
"""The day of the rows that hold what the totals gained since the per-day rows' watermark
(``MetricState.dated``): looks keep totals only, which is cheaper than keeping days; the
per-day rows catch up when the series is asked for, and the undated rows go."""


def undated(metric: Metric, summaries: Mapping[str, Summary]) -> list[DayChange]:
    """The first look's totals as one undated row per arm."""
    rows = []
    for arm, sm in summaries.items():
        if isinstance(sm, RatioSummary):
            rows.append(
                DayChange(
                    arm,
                    UNDATED,
                    sm.n,
                    sm.num_sum,
                    sm.num_sum_sq,
                    ds=sm.den_sum,
                    dss=sm.den_sum_sq,
                    nds=sm.cross_sum,
                )
            )
        else:
            rows.append(
                DayChange(arm, UNDATED, sm.n, sm.sum, sm.sum_sq, sm.x_sum, sm.x_sum_sq, sm.xy_sum)
            )
    return rows


def negated(rows: Iterable[DayChange]) -> list[DayChange]:
    return [DayChange(r.arm, r.day, *(-getattr(r, f) for f in SUMS)) for r in rows]


def as_totals(changes: Iterable[DayChange]) -> list[DayChange]:
    """The same changes, one undated row per arm."""
    return list(
        merge((), (DayChange(c.arm, UNDATED, *(getattr(c, f) for f in SUMS)) for c in changes))
    )


def merge(days: Iterable[DayChange], changes: Iterable[DayChange]) -> tuple[DayChange, ...]:
    """``days`` plus ``changes``, one row per (arm, day), ordered by day then arm."""
    out: dict[tuple[str, str], DayChange] = {}
    for row in (*days, *changes):
        key = (row.arm, row.day)
        out[key] = out[key].plus(row) if key in out else row
    return tuple(sorted(out.values(), key=lambda r: (r.day, r.arm)))


def _summary(metric: Metric, row: DayChange) -> Summary:
    # A sum of squares is never negative; a difference of two equal sums may round to -1e-13.
    ss, xss, dss = max(row.ss, 0.0), max(row.xss, 0.0), max(row.dss, 0.0)
    if metric.kind is MetricKind.RATIO:
        return RatioSummary(row.n, row.s, ss, row.ds, dss, row.nds)
    if metric.cuped_lookback_seconds is not None:
        return ArmSummary(row.n, row.s, ss, row.xs, xss, row.xys)
    return ArmSummary(row.n, row.s, ss)


def _by_arm(days: Iterable[DayChange]) -> dict[str, DayChange]:
    out: dict[str, DayChange] = {}
    for row in days:
        whole = DayChange(row.arm, "", *(getattr(row, f) for f in SUMS))
        out[row.arm] = out[row.arm].plus(whole) if row.arm in out else whole
    return out


def totals(metric: Metric, days: Iterable[DayChange]) -> dict[str, Summary]:
    """``{arm: summary}`` over all days; arms without exposed units are absent."""
    return {arm: _summary(metric, row) for arm, row in sorted(_by_arm(days).items()) if row.n > 0}


def series(metric: Metric, days: Sequence[DayChange]) -> list[DailySummaries]:
    """Cumulative summaries at the end of each day on which a unit was exposed or an event
    attributed -- the days and numbers of a full per-day recomputation at the per-day rows'
    watermark (undated rows are left out)."""
    days = [row for row in days if row.day != UNDATED]
    arms = sorted(arm for arm, row in _by_arm(days).items() if row.n > 0)
    by_day: dict[str, list[DayChange]] = {}
    for row in days:
        by_day.setdefault(row.day, []).append(row)
    running = {arm: DayChange(arm, "") for arm in arms}
    out = []
    for day in sorted(by_day):
        rows = by_day[day]
        if not any(r.n or r.events for r in rows):
            continue  # only changes that cancelled out (an erased unit's days)
        for row in rows:
            if row.arm in running:
                running[row.arm] = running[row.arm].plus(row)
        without_cuped = Metric(
            metric.name, metric.kind, metric.event, metric.denominator, metric.window_seconds
        )
        out.append(
            DailySummaries(
                date.fromisoformat(day),
                {arm: _summary(without_cuped, running[arm]) for arm in arms},
            )
        )
    return out


def _fields(summary: Summary) -> dict[str, float]:
    return {f.name: float(getattr(summary, f.name)) for f in fields(summary)}


def close(a: float, b: float, scale: float) -> bool:
    """Equal to :data:`RELATIVE_TOLERANCE` relative to ``scale`` (the largest magnitude of the
    sums the value was computed from: a difference of large sums is only that exact)."""
    return math.isclose(a, b, rel_tol=RELATIVE_TOLERANCE, abs_tol=RELATIVE_TOLERANCE * scale)


def differences(
    maintained: Mapping[str, Mapping[str, Summary]],
    recomputed: Mapping[str, Mapping[str, Summary]],
) -> list[str]:
    """Every number that differs, as ``metric/arm field: maintained vs recomputed``."""
    out = []
    for name in sorted(set(maintained) | set(recomputed)):
        mine, full = maintained.get(name, {}), recomputed.get(name, {})
        for arm in sorted(set(mine) | set(full)):
            if arm not in mine or arm not in full:
                where = "maintained" if arm not in mine else "recomputed"
                out.append(f"{name}/{arm}: missing from the {where} numbers")
                continue
            a, b = _fields(mine[arm]), _fields(full[arm])
            scale = max(1.0, *(abs(v) for v in (*a.values(), *b.values())))
            for field, value in a.items():
                if not close(value, b[field], scale):
                    out.append(f"{name}/{arm} {field}: {value!r} maintained vs {b[field]!r}")
    return out
