"""The in-memory twin of the SQL analysis: the same definitions, computed row by row in Python.

It exists so the conformance suite can hold SQLite, PostgreSQL and a plain-Python reading of
the metric definitions (``abkit.core.metrics``) to the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from typing import Any

from abkit.core.increments import DailySummaries
from abkit.core.metrics import Metric, MetricKind
from abkit.core.model import Event, Exposure
from abkit.core.stats import ArmSummary, RatioSummary, Summary


def _unit_value(kind: MetricKind, events: Iterable[Event]) -> float:
    chosen = list(events)
    if kind is MetricKind.BINARY:
        return 1.0 if chosen else 0.0
    if kind is MetricKind.COUNT:
        return float(len(chosen))
    return sum(e.value for e in chosen)


def _after(metric: Metric, event: str, exposure: Exposure, events: Sequence[Event]) -> list[Event]:
    end = (
        exposure.exposed_at + timedelta(seconds=metric.window_seconds)
        if metric.window_seconds is not None
        else None
    )
    return [
        e
        for e in events
        if e.metric == event
        and e.occurred_at >= exposure.exposed_at
        and (end is None or e.occurred_at < end)
    ]


def summaries(
    exposures: Iterable[Exposure],
    events_by_unit: dict[str, list[Event]],
    metrics: Sequence[Metric],
    as_of: datetime | None,
) -> dict[str, dict[str, Summary]]:
    moments: dict[str, dict[str, list[float]]] = {m.name: {} for m in metrics}
    counts: dict[str, int] = {}
    for x in exposures:
        if as_of is not None and x.exposed_at >= as_of:
            continue
        counts[x.arm_key] = counts.get(x.arm_key, 0) + 1
        unit_events = [
            e for e in events_by_unit.get(x.unit_id, []) if as_of is None or e.occurred_at < as_of
        ]
        for m in metrics:
            acc = moments[m.name].setdefault(x.arm_key, [0.0] * 5)
            y = _unit_value(m.kind, _after(m, m.event, x, unit_events))
            acc[0] += y
            acc[1] += y * y
            if m.kind is MetricKind.RATIO:
                d = _unit_value(MetricKind.CONTINUOUS, _after(m, m.denominator, x, unit_events))
                acc[2] += d
                acc[3] += d * d
                acc[4] += y * d
            elif m.cuped_lookback_seconds is not None:
                start = x.exposed_at - timedelta(seconds=m.cuped_lookback_seconds)
                before = [
                    e
                    for e in unit_events
                    if e.metric == m.event and start <= e.occurred_at < x.exposed_at
                ]
                c = _unit_value(m.kind, before)
                acc[2] += c
                acc[3] += c * c
                acc[4] += c * y
    out: dict[str, dict[str, Summary]] = {}
    for m in metrics:
        out[m.name] = {}
        for arm, acc in moments[m.name].items():
            n = counts[arm]
            if m.kind is MetricKind.RATIO:
                out[m.name][arm] = RatioSummary(n, *acc)
            elif m.cuped_lookback_seconds is not None:
                out[m.name][arm] = ArmSummary(n, *acc)
            else:
                out[m.name][arm] = ArmSummary(n, acc[0], acc[1])
    return out


def daily(
    exposures: Iterable[Exposure], events_by_unit: dict[str, list[Event]], metric: Metric
) -> list[DailySummaries]:
    exposed = list(exposures)
    days: set[date] = {x.exposed_at.date() for x in exposed}
    for x in exposed:
        for event in metric.events:
            days.update(
                e.occurred_at.date()
                for e in _after(metric, event, x, events_by_unit.get(x.unit_id, []))
            )
    arms = sorted({x.arm_key for x in exposed})
    series = []
    for day in sorted(days):
        cutoff = datetime.combine(
            day + timedelta(days=1), datetime.min.time(), exposed[0].exposed_at.tzinfo
        )
        snapshot = summaries(exposed, events_by_unit, [_without_cuped(metric)], cutoff)[metric.name]
        # Every arm from the first day on, as the SQL series (no units yet: zero sums).
        empty = (
            RatioSummary(0, 0, 0, 0, 0, 0)
            if metric.kind is MetricKind.RATIO
            else ArmSummary(0, 0, 0)
        )
        series.append(DailySummaries(day, {a: snapshot.get(a, empty) for a in arms}))
    return series


def _without_cuped(metric: Metric) -> Metric:
    fields: dict[str, Any] = {
        "name": metric.name,
        "kind": metric.kind,
        "event": metric.event,
        "denominator": metric.denominator,
        "window_seconds": metric.window_seconds,
    }
    return Metric(**fields)
