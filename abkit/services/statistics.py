"""The statistics use case: a look's sufficient statistics, maintained instead of recomputed.

:meth:`StatisticsService.refresh` brings an experiment's maintained statistics
(:mod:`abkit.core.increments`) up to the store's current watermark and returns them:

1. **watermark** -- in a transaction of its own, how far ingestion has committed;
2. **advance** -- in one transaction: load the states; for each metric definition whose state is
   behind (grouped by the watermark they are at), compute what arrived in between, add it and
   move the watermark, conditional on the state's version. A look keeps only the totals (one
   undated row per arm, :data:`~abkit.core.increments.UNDATED`): per unit, not per day, which
   costs about half. A definition with no state (the first look, or a metric added to the
   policy) starts from the full recomputation's totals -- the cost of a look before
   incremental looks. :meth:`StatisticsService.daily` brings the per-day rows up from their own
   watermark when the series is asked for;
3. two workers at once: the second waits for the first (a per-experiment lock on PostgreSQL)
   and continues from its committed watermark; should a state still move under it, the
   version check refuses the save (:class:`~abkit.errors.ConflictError`) and it starts over.

:meth:`StatisticsService.reconcile` checks the state against the full recomputation at the same
watermark (``abkit results KEY --recompute``; the worker, on a schedule).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from abkit.core.increments import (
    UNDATED,
    DailySummaries,
    MetricState,
    Watermark,
    as_totals,
    differences,
    merge,
    metric_key,
    negated,
    series,
    totals,
    undated,
)
from abkit.core.metrics import Metric
from abkit.core.stats import Summary
from abkit.errors import ConflictError
from abkit.ports import Clock, Store

log = logging.getLogger(__name__)

Summaries = dict[str, dict[str, Summary]]

FULL_SHARE = 0.15
"""A look recomputes from every row when more rows arrived since the last one than this share
of the experiment's units: each new event makes its unit's whole history be read again, so
past about a sixth of the units the full pass is cheaper (BENCHMARKS.md, "Incremental looks")."""


@dataclass(frozen=True, slots=True)
class Maintained:
    """The maintained statistics after a refresh, with each metric's state."""

    summaries: Summaries
    states: dict[str, MetricState]
    """By metric name."""
    advanced: tuple[str, ...]
    """The metrics whose state this refresh moved (the others were already up to date)."""


@dataclass(frozen=True, slots=True)
class Reconciliation:
    maintained: Summaries
    recomputed: Summaries
    differences: tuple[str, ...]
    watermarks: dict[str, Watermark]
    """By metric name: where both were computed."""

    @property
    def ok(self) -> bool:
        return not self.differences


class StatisticsService:
    def __init__(
        self, store: Store, clock: Clock, *, attempts: int = 5, full_share: float = FULL_SHARE
    ) -> None:
        self._store = store
        self._clock = clock
        self._attempts = attempts
        self._full_share = full_share

    def refresh(self, experiment_key: str, metrics: Sequence[Metric]) -> Maintained:
        """The statistics of ``metrics``, brought up to the store's watermark."""
        for attempt in range(1, self._attempts + 1):
            try:
                return self._advance(experiment_key, metrics)
            except ConflictError as exc:
                log.info(
                    "%s: statistics moved by another worker (%s), attempt %d",
                    experiment_key,
                    exc,
                    attempt,
                )
        raise ConflictError(
            f"{experiment_key!r}: the statistics kept moving under {self._attempts} attempts; "
            "another worker is looking at the same experiment"
        )

    def _advance(self, experiment_key: str, metrics: Sequence[Metric]) -> Maintained:
        with self._store.transaction() as tx:
            upto = tx.maintained.watermark()
        now = self._clock.now()
        with self._store.transaction() as tx:
            tx.maintained.lock(experiment_key)
            states = tx.maintained.load(experiment_key)
            current: dict[str, MetricState] = {}
            behind: dict[Watermark | None, list[Metric]] = {}
            for metric in metrics:
                state = states.get(metric_key(metric))
                if state is not None and state.watermark.covers(upto):
                    current[metric.name] = state  # another look already went at least as far
                elif state is not None and not upto.covers(state.watermark):
                    raise ConflictError(f"state at {state.watermark}, store at {upto}")
                else:
                    behind.setdefault(state.watermark if state else None, []).append(metric)
            for before, group in behind.items():
                old = [states[metric_key(m)] for m in group] if before is not None else []
                units = max((sum(r.n for r in s.days) for s in old), default=0)
                if before is None or upto.drawn_since(before) > self._full_share * units:
                    # The first look, or so much new that reading it all is cheaper: the full
                    # recomputation's totals, minus what the state holds (undated).
                    full = tx.analysis.summaries(experiment_key, group, upto=upto)
                    held = {s.metric.name: s.days for s in old}
                    changes = {
                        m.name: undated(m, full.get(m.name, {}))
                        + negated(as_totals(held.get(m.name, ())))
                        for m in group
                    }
                else:
                    changes = tx.maintained.changes(experiment_key, group, before, upto, days=False)
                for metric in group:
                    state = states.get(metric_key(metric))
                    dated = state.dated if state else Watermark()
                    tx.maintained.save(
                        experiment_key,
                        metric,
                        changes[metric.name],
                        expected_version=state.version if state else None,
                        watermark=upto,
                        dated=dated,
                        now=now,
                    )
                    current[metric.name] = MetricState(
                        metric,
                        upto,
                        state.version + 1 if state else 1,
                        merge(state.days if state else (), changes[metric.name]),
                        dated,
                    )
        advanced = tuple(m.name for group in behind.values() for m in group)
        return Maintained(
            {m.name: totals(m, current[m.name].days) for m in metrics}, current, advanced
        )

    def daily(self, experiment_key: str, metric: Metric) -> list[DailySummaries]:
        """The cumulative per-day series of ``metric``, from the same maintained state (its
        per-day rows are computed the first time: a pass over every row, once)."""
        state = self.refresh(experiment_key, [metric]).states[metric.name]
        if state.dated != state.watermark:
            state = self._date(experiment_key, metric)
        return series(metric, state.days)

    def _date(self, experiment_key: str, metric: Metric) -> MetricState:
        """Bring the per-day rows up to the totals' watermark; the undated rows go."""
        for _ in range(self._attempts):
            try:
                with self._store.transaction() as tx:
                    tx.maintained.lock(experiment_key)
                    state = tx.maintained.load(experiment_key)[metric_key(metric)]
                    if state.dated == state.watermark:
                        return state
                    rows = tx.maintained.changes(
                        experiment_key, [metric], state.dated, state.watermark
                    )[metric.name]
                    tx.maintained.save(
                        experiment_key,
                        metric,
                        rows,
                        expected_version=state.version,
                        watermark=state.watermark,
                        dated=state.watermark,
                        now=self._clock.now(),
                        drop_undated=True,
                    )
                    kept = [r for r in state.days if r.day != UNDATED]
                    return MetricState(
                        metric,
                        state.watermark,
                        state.version + 1,
                        merge(kept, rows),
                        state.watermark,
                    )
            except ConflictError:
                continue
        raise ConflictError(f"{experiment_key!r}: the statistics kept moving")

    def reconcile(self, experiment_key: str, metrics: Sequence[Metric]) -> Reconciliation:
        """Refresh, then recompute every number from every row at the same watermark."""
        maintained = self.refresh(experiment_key, metrics)
        by_mark: dict[Watermark, list[Metric]] = {}
        for metric in metrics:
            by_mark.setdefault(maintained.states[metric.name].watermark, []).append(metric)
        recomputed: Summaries = {}
        with self._store.transaction() as tx:
            for mark, group in by_mark.items():
                recomputed.update(tx.analysis.summaries(experiment_key, group, upto=mark))
        return Reconciliation(
            maintained.summaries,
            recomputed,
            tuple(differences(maintained.summaries, recomputed)),
            {m.name: maintained.states[m.name].watermark for m in metrics},
        )

    def rebuild(self, experiment_key: str) -> None:
        """Drop the experiment's maintained state; the next refresh computes it afresh."""
        with self._store.transaction() as tx:
            tx.maintained.drop(experiment_key)
