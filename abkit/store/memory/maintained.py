"""The in-memory twin of the maintained statistics (:mod:`abkit.store.increments`).

A plain reading of the same contract, unit by unit: a unit's contribution at a watermark is its
exposure-day row (``n``, the CUPED terms) and one row per day on which its value changed, from
the events numbered up to the watermark; a change is the contribution at the new watermark minus
the one at the old. The conformance suite holds SQLite and PostgreSQL to these numbers.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from abkit.core.increments import (
    UNDATED,
    DayChange,
    MetricState,
    Watermark,
    as_totals,
    merge,
    metric_key,
    negated,
)
from abkit.core.metrics import Metric, MetricKind
from abkit.core.model import Event, Exposure
from abkit.errors import ConflictError
from abkit.store.erasure import erase_units
from abkit.store.memory.analysis import _after, _unit_value

if TYPE_CHECKING:
    from abkit.store.memory import _State


def _day(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def contribution(metric: Metric, x: Exposure, events: Sequence[Event]) -> list[DayChange]:
    """What one exposed unit adds to the per-(arm, day) sums, given its events."""
    ys = _after(metric, metric.event, x, events)
    ds = _after(metric, metric.denominator, x, events) if metric.kind is MetricKind.RATIO else []
    y_total = _unit_value(metric.kind, ys)
    first = DayChange(x.arm_key, _day(x.exposed_at).isoformat(), n=1)
    if metric.cuped_lookback_seconds is not None:
        start = x.exposed_at - timedelta(seconds=metric.cuped_lookback_seconds)
        pre = [
            e for e in events if e.metric == metric.event and start <= e.occurred_at < x.exposed_at
        ]
        c = _unit_value(metric.kind, pre)
        first = DayChange(first.arm, first.day, n=1, xs=c, xss=c * c, xys=c * y_total)
    rows = [first]
    y_was = d_was = 0.0
    for day in sorted({_day(e.occurred_at) for e in (*ys, *ds)}):
        y = _unit_value(metric.kind, [e for e in ys if _day(e.occurred_at) <= day])
        d = _unit_value(MetricKind.CONTINUOUS, [e for e in ds if _day(e.occurred_at) <= day])
        rows.append(
            DayChange(
                x.arm_key,
                day.isoformat(),
                s=y - y_was,
                ss=y * y - y_was * y_was,
                ds=d - d_was,
                dss=d * d - d_was * d_was,
                nds=y * d - y_was * d_was,
                events=sum(1 for e in (*ys, *ds) if _day(e.occurred_at) == day),
            )
        )
        y_was, d_was = y, d
    return rows


class MemoryMaintained:
    def __init__(self, state: _State) -> None:
        self._s = state

    def watermark(self) -> Watermark:
        return Watermark(self._s.counters["exposures"], self._s.counters["events"])

    def lock(self, experiment_key: str) -> None:
        """A transaction of the twin holds the whole store already."""

    def load(self, experiment_key: str) -> dict[str, MetricState]:
        return {k: s for (e, k), s in self._s.maintained.items() if e == experiment_key}

    def _at(
        self, metric: Metric, x: Exposure, events: Sequence[Event], mark: Watermark
    ) -> list[DayChange]:
        if self._s.exposure_seq[(x.experiment_key, x.unit_id)] > mark.exposures:
            return []
        seen = [e for e in events if self._s.event_seq[e.event_id] <= mark.events]
        return contribution(metric, x, seen)

    def changes(
        self,
        experiment_key: str,
        metrics: Sequence[Metric],
        before: Watermark,
        after: Watermark,
        *,
        units: Sequence[str] | None = None,
        days: bool = True,
    ) -> dict[str, builtins.list[DayChange]]:
        exposed = {u: x for (k, u), x in self._s.exposures.items() if k == experiment_key}
        names = {e for m in metrics for e in m.events}
        if units is not None:
            touched = [u for u in units if u in exposed]
        else:
            fresh = {
                u for u in exposed if self._s.exposure_seq[(experiment_key, u)] > before.exposures
            }
            moved = {
                e.unit_id
                for e in self._s.events.values()
                if before.events < self._s.event_seq[e.event_id] <= after.events
                and e.metric in names
            }
            touched = sorted(fresh | (moved & set(exposed)))
        events: dict[str, list[Event]] = {u: [] for u in touched}
        for e in self._s.events.values():
            if e.unit_id in events:
                events[e.unit_id].append(e)
        out: dict[str, list[DayChange]] = {}
        for metric in metrics:
            rows: list[DayChange] = []
            for u in touched:
                rows += self._at(metric, exposed[u], events[u], after)
                rows += negated(self._at(metric, exposed[u], events[u], before))
            merged = merge((), rows) if days else as_totals(rows)
            out[metric.name] = [r for r in merged if not r.empty]
        return out

    def save(
        self,
        experiment_key: str,
        metric: Metric,
        changes: Sequence[DayChange],
        *,
        expected_version: int | None,
        watermark: Watermark,
        dated: Watermark,
        now: datetime,
        drop_undated: bool = False,
    ) -> None:
        at = (experiment_key, metric_key(metric))
        current = self._s.maintained.get(at)
        if (current.version if current else None) != expected_version:
            raise ConflictError(f"{experiment_key!r}: another look moved {at[1]} first")
        days = current.days if current else ()
        if drop_undated:
            days = tuple(r for r in days if r.day != UNDATED)
        version = current.version + 1 if current else 1
        self._s.maintained[at] = MetricState(
            metric, watermark, version, merge(days, changes), dated
        )

    def erase_units(self, unit_ids: Sequence[str], *, now: datetime) -> int:
        return erase_units(self, {key for key, _ in self._s.maintained}, unit_ids, now)

    def invalidate_before(self, cutoff: datetime) -> int:
        doomed = []
        for at, state in self._s.maintained.items():
            reach = (cutoff + timedelta(seconds=state.metric.cuped_lookback_seconds or 0)).date()
            # An undated row (UNDATED sorts first) may count a unit of any day.
            if min((r.day for r in state.days), default=UNDATED) <= reach.isoformat():
                doomed.append(at)
        for at in doomed:
            del self._s.maintained[at]
        return len(doomed)

    def drop(self, experiment_key: str) -> None:
        for at in [at for at in self._s.maintained if at[0] == experiment_key]:
            del self._s.maintained[at]
