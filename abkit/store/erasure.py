"""Erasure from maintained statistics, the same for every store: what a unit contributed comes
out of the per-day rows (at their watermark) and out of the undated totals (what it added
between the per-day rows' watermark and the totals')."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from abkit.core.increments import DayChange, MetricState, Watermark
from abkit.ports import MaintainedStatistics


def erasure(
    repository: MaintainedStatistics,
    experiment_key: str,
    state: MetricState,
    unit_ids: Sequence[str],
) -> list[DayChange]:
    """The changes that remove ``unit_ids`` from ``state`` (empty if it does not count them)."""
    metric = state.metric
    rows: list[DayChange] = []
    if state.dated != Watermark():  # minus what they contribute to the per-day rows
        rows += repository.changes(
            experiment_key, [metric], state.dated, Watermark(), units=unit_ids
        )[metric.name]
    if state.watermark != state.dated:  # minus what they added to the totals since
        rows += repository.changes(
            experiment_key, [metric], state.watermark, state.dated, units=unit_ids, days=False
        )[metric.name]
    return rows


def erase_units(
    repository: MaintainedStatistics,
    experiment_keys: Iterable[str],
    unit_ids: Sequence[str],
    now: datetime,
) -> int:
    """Take ``unit_ids`` out of every state of these experiments; how many states changed."""
    changed = 0
    for experiment_key in sorted(experiment_keys):
        for state in repository.load(experiment_key).values():
            minus = erasure(repository, experiment_key, state, unit_ids)
            if minus:
                repository.save(
                    experiment_key,
                    state.metric,
                    minus,
                    expected_version=state.version,
                    watermark=state.watermark,
                    dated=state.dated,
                    now=now,
                )
                changed += 1
    return changed
