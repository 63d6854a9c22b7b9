"""Sufficient statistics in SQL: per arm and metric, ``n``, sums and sums of squares.

The statistics engine never sees a row (docs/design.md, "the data contract"). For one experiment the
database joins exposures (first exposure per unit) with the KPI events of the requested metrics,
builds each unit's value in a first ``GROUP BY`` (arm, unit) and reduces to per-arm moments in a
second -- one query for every metric of the experiment, identical on SQLite and PostgreSQL except
for timestamp arithmetic. :func:`summary_sql` renders it; ``analysis/*.sql`` holds the rendered
query for analysts (a test keeps the two in sync).

The per-day series (:func:`daily_sql`) avoids re-scanning once per day: per (unit, day) it takes
the increment ``a`` of the unit's value and, with a window function, its running total ``y``; the
day's change of the sum of squares is ``y**2 - (y - a)**2``. Summed per (arm, day) and accumulated
over days, that gives exactly the cumulative ``ArmSummary`` of every day in one pass.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, TextClause, bindparam, text

from abkit.core.increments import DailySummaries, Watermark
from abkit.core.metrics import Metric, MetricKind
from abkit.core.stats import ArmSummary, RatioSummary, Summary
from abkit.store.schema import UTCDateTime

ANALYSIS_WORK_MEM = "256MB"
"""PostgreSQL ``work_mem`` for the analysis transaction: the per-arm aggregate, and the sorts the
merge join needs if the unit-first events index (migration 0005) is missing."""


def _plus(column: str, seconds: int, dialect: str) -> str:
    """``column + seconds`` as a timestamp, exact to the microsecond on both backends."""
    seconds = int(seconds)  # validated positive int; inlined, never user text
    if dialect == "postgresql":
        return f"({column} + make_interval(secs => {seconds}))"
    # SQLite stores 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC); whole seconds never change the fraction.
    sign = "+" if seconds >= 0 else "-"
    return (
        f"(strftime('%Y-%m-%d %H:%M:%S', {column}, '{sign}{abs(seconds)} seconds')"
        f" || substr({column}, 20))"
    )


def _day(column: str, dialect: str) -> str:
    if dialect == "postgresql":
        return f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    return f"substr({column}, 1, 10)"


def _event_params(metrics: Sequence[Metric]) -> dict[str, str]:
    """One bind parameter per distinct event name: ``{event: "e0", ...}``."""
    params: dict[str, str] = {}
    for metric in metrics:
        for event in metric.events:
            params.setdefault(event, f"e{len(params)}")
    return params


def _unit_value(kind: MetricKind, predicate: str) -> str:
    if kind is MetricKind.BINARY:
        return f"MAX(CASE WHEN {predicate} THEN 1 ELSE 0 END)"
    if kind is MetricKind.COUNT:
        return f"SUM(CASE WHEN {predicate} THEN 1 ELSE 0 END)"
    return f"SUM(CASE WHEN {predicate} THEN v.value ELSE 0 END)"


def _after_exposure(metric: Metric, event_param: str, dialect: str) -> str:
    predicate = f"v.metric = :{event_param} AND v.occurred_at >= x.exposed_at"
    if metric.window_seconds is not None:
        predicate += f" AND v.occurred_at < {_plus('x.exposed_at', metric.window_seconds, dialect)}"
    return predicate


def summary_sql(
    metrics: Sequence[Metric], dialect: str, *, as_of: bool = False, upto: bool = False
) -> str:
    """The per-arm sufficient statistics of ``metrics`` for ``:experiment_key``.

    Columns: ``arm_key, n`` then, for metric ``i``: ``s{i}, ss{i}`` (sum and sum of squares of
    per-unit values), with CUPED ``xs{i}, xss{i}, xys{i}``, for a ratio ``ds{i}, dss{i}, nds{i}``
    (denominator sum, its sum of squares, numerator x denominator). With ``as_of``, only
    exposures and events before ``:as_of`` count; with ``upto``, only those numbered (ingestion
    order) up to ``:hx`` and ``:he`` -- a maintained state's watermark.
    """
    events = _event_params(metrics)
    unit_columns: list[str] = []
    arm_columns: list[str] = []
    for i, m in enumerate(metrics):
        after = _after_exposure(m, events[m.event], dialect)
        unit_columns.append(f"{_unit_value(m.kind, after)} AS y{i}")
        arm_columns += [f"SUM(y{i}) AS s{i}", f"SUM(y{i} * y{i}) AS ss{i}"]
        if m.cuped_lookback_seconds is not None:
            start = _plus("x.exposed_at", -m.cuped_lookback_seconds, dialect)
            before = (
                f"v.metric = :{events[m.event]} AND v.occurred_at < x.exposed_at "
                f"AND v.occurred_at >= {start}"
            )
            unit_columns.append(f"{_unit_value(m.kind, before)} AS x{i}")
            arm_columns += [
                f"SUM(x{i}) AS xs{i}",
                f"SUM(x{i} * x{i}) AS xss{i}",
                f"SUM(x{i} * y{i}) AS xys{i}",
            ]
        if m.kind is MetricKind.RATIO:
            den = _after_exposure(m, events[m.denominator], dialect)
            unit_columns.append(f"{_unit_value(MetricKind.CONTINUOUS, den)} AS d{i}")
            arm_columns += [
                f"SUM(d{i}) AS ds{i}",
                f"SUM(d{i} * d{i}) AS dss{i}",
                f"SUM(y{i} * d{i}) AS nds{i}",
            ]
    cutoff_exposure = " AND exposed_at < :as_of" if as_of else ""
    cutoff_event = " AND v.occurred_at < :as_of" if as_of else ""
    if upto:
        cutoff_exposure += " AND seq <= :hx"
        cutoff_event += " AND v.seq <= :he"
    in_list = ", ".join(f":{p}" for p in events.values())
    unit_select = ",\n        ".join(unit_columns)
    arm_select = ",\n    ".join(arm_columns)
    # Grouped by the unit alone (a unit has one arm: MIN picks it), so on PostgreSQL the merge of
    # exposures and events, both in unit order, feeds the per-unit aggregate with no sort and no
    # hash table (see SqlAnalysis.summaries). Built only from validated metric definitions
    # (integers, bind-parameter names); every value a user supplies is a bind parameter.
    return f"""WITH exposed AS (
    SELECT arm_key, unit_id, exposed_at
    FROM exposures
    WHERE experiment_key = :experiment_key{cutoff_exposure}
),
unit_values AS (
    SELECT
        MIN(x.arm_key) AS arm_key,
        {unit_select}
    FROM exposed AS x
    LEFT JOIN events AS v
        ON v.unit_id = x.unit_id AND v.metric IN ({in_list}){cutoff_event}
    GROUP BY x.unit_id
)
SELECT
    arm_key,
    COUNT(*) AS n,
    {arm_select}
FROM unit_values
GROUP BY arm_key
ORDER BY arm_key
"""


def daily_sql(metric: Metric, dialect: str, *, upto: bool = False) -> str:
    """Per (arm, day) increments of ``metric``'s sums (see the module docstring).

    Columns: ``arm_key, day, d_sum, d_sum_sq`` and, for a ratio, ``d_den, d_den_sq, d_cross``.
    The exposures per day come from :func:`daily_exposures_sql`.
    """
    events = _event_params([metric])
    after = _after_exposure(metric, events[metric.event], dialect).replace(
        f"v.metric = :{events[metric.event]} AND ", ""
    )
    value = "1" if metric.kind in (MetricKind.BINARY, MetricKind.COUNT) else "v.value"
    num = f"SUM(CASE WHEN v.metric = :{events[metric.event]} THEN {value} ELSE 0 END)"
    ratio = metric.kind is MetricKind.RATIO
    den_inc = (
        f",\n        SUM(CASE WHEN v.metric = :{events[metric.denominator]} "
        "THEN v.value ELSE 0 END) AS b"
        if ratio
        else ""
    )
    den_run = ", b, SUM(b) OVER w AS yb" if ratio else ""
    if metric.kind is MetricKind.BINARY:
        # The unit's value is min(1, running count): it changes once, on the first event's day.
        delta = "(CASE WHEN ya > 0 THEN 1 ELSE 0 END) - (CASE WHEN ya - a > 0 THEN 1 ELSE 0 END)"
        increments = f"{delta} AS d_sum, {delta} AS d_sum_sq"
    else:
        increments = "a AS d_sum, ya * ya - (ya - a) * (ya - a) AS d_sum_sq"
    if ratio:
        increments += (
            ", b AS d_den, yb * yb - (yb - b) * (yb - b) AS d_den_sq,"
            " ya * yb - (ya - a) * (yb - b) AS d_cross"
        )
    sums = "SUM(d_sum) AS d_sum, SUM(d_sum_sq) AS d_sum_sq"
    if ratio:
        sums += ", SUM(d_den) AS d_den, SUM(d_den_sq) AS d_den_sq, SUM(d_cross) AS d_cross"
    in_list = ", ".join(f":{p}" for p in events.values())
    bound_exposure = " AND seq <= :hx" if upto else ""
    bound_event = " AND v.seq <= :he" if upto else ""
    # Built only from validated metric definitions (integers, bind-parameter names); every value
    # a user supplies is a bind parameter.
    return f"""WITH exposed AS (
    SELECT arm_key, unit_id, exposed_at
    FROM exposures
    WHERE experiment_key = :experiment_key{bound_exposure}
),
increments AS (
    SELECT
        x.arm_key,
        x.unit_id,
        {_day("v.occurred_at", dialect)} AS day,
        {num} AS a{den_inc}
    FROM exposed AS x
    JOIN events AS v
        ON v.unit_id = x.unit_id AND v.metric IN ({in_list}) AND {after}{bound_event}
    GROUP BY x.arm_key, x.unit_id, {_day("v.occurred_at", dialect)}
),
running AS (
    SELECT arm_key, day, a, SUM(a) OVER w AS ya{den_run}
    FROM increments
    WINDOW w AS (PARTITION BY unit_id ORDER BY day ROWS UNBOUNDED PRECEDING)
),
changes AS (
    SELECT arm_key, day, {increments}
    FROM running
)
SELECT arm_key, day, {sums}
FROM changes
GROUP BY arm_key, day
ORDER BY day, arm_key
"""


def daily_exposures_sql(dialect: str, *, upto: bool = False) -> str:
    bound = " AND seq <= :hx" if upto else ""
    return f"""SELECT arm_key, {_day("exposed_at", dialect)} AS day, COUNT(*) AS n
FROM exposures
WHERE experiment_key = :experiment_key{bound}
GROUP BY arm_key, {_day("exposed_at", dialect)}
ORDER BY day, arm_key
"""


def _params(
    experiment_key: str, metrics: Sequence[Metric], upto: Watermark | None = None
) -> dict[str, Any]:
    params: dict[str, Any] = {"experiment_key": experiment_key}
    if upto is not None:
        params.update(hx=upto.exposures, he=upto.events)
    params.update({p: event for event, p in _event_params(metrics).items()})
    return params


def _summary_from_row(row: Any, i: int, metric: Metric) -> Summary:
    n = int(row["n"])
    s, ss = float(row[f"s{i}"] or 0), float(row[f"ss{i}"] or 0)
    if metric.kind is MetricKind.RATIO:
        return RatioSummary(
            n,
            s,
            ss,
            float(row[f"ds{i}"] or 0),
            float(row[f"dss{i}"] or 0),
            float(row[f"nds{i}"] or 0),
        )
    if metric.cuped_lookback_seconds is not None:
        return ArmSummary(
            n,
            s,
            ss,
            float(row[f"xs{i}"] or 0),
            float(row[f"xss{i}"] or 0),
            float(row[f"xys{i}"] or 0),
        )
    return ArmSummary(n, s, ss)


class SqlAnalysis:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def summaries(
        self,
        experiment_key: str,
        metrics: Sequence[Metric],
        *,
        as_of: datetime | None = None,
        upto: Watermark | None = None,
    ) -> dict[str, dict[str, Summary]]:
        """``{metric name: {arm key: summary}}``; arms without exposures are absent."""
        if not metrics:
            return {}
        query, params = self._prepare(experiment_key, metrics, as_of, upto)
        rows = self._conn.execute(query, params).mappings()
        out: dict[str, dict[str, Summary]] = {m.name: {} for m in metrics}
        for row in rows:
            for i, metric in enumerate(metrics):
                out[metric.name][row["arm_key"]] = _summary_from_row(row, i, metric)
        return out

    def plan(self, experiment_key: str, metrics: Sequence[Metric]) -> str:
        """PostgreSQL's plan for :meth:`summaries`, as ``EXPLAIN`` prints it (not executed)."""
        if self._conn.dialect.name != "postgresql":
            raise ValueError("plan() explains PostgreSQL's plan only")
        query, params = self._prepare(experiment_key, metrics, None, None)
        explain = text("EXPLAIN " + query.text)
        return "\n".join(row[0] for row in self._conn.execute(explain, params))

    def _prepare(
        self,
        experiment_key: str,
        metrics: Sequence[Metric],
        as_of: datetime | None,
        upto: Watermark | None,
    ) -> tuple[TextClause, dict[str, Any]]:
        dialect = self._conn.dialect.name
        params = _params(experiment_key, metrics, upto)
        query = text(summary_sql(metrics, dialect, as_of=as_of is not None, upto=upto is not None))
        if dialect == "postgresql":
            # Stream, don't hash. The exposures' primary key and the events' unit-first covering
            # index (migration 0005) both yield rows in unit order, so a merge join feeds the
            # per-unit aggregate directly: constant memory and time linear in the rows. Left to
            # itself the planner prefers hashing every exposed unit, which is twice as slow at
            # 1 M units and spills to disk once the tables outgrow work_mem (BENCHMARKS.md).
            # work_mem still serves the small per-arm aggregate and any sort the merge needs
            # when the index is missing. Both settings are transaction-local.
            self._conn.execute(text(f"SET LOCAL work_mem = '{ANALYSIS_WORK_MEM}'"))
            self._conn.execute(text("SET LOCAL enable_hashjoin = off"))
        if as_of is not None:
            params["as_of"] = as_of
            query = query.bindparams(bindparam("as_of", type_=UTCDateTime()))
        return query, params

    def daily(
        self, experiment_key: str, metric: Metric, *, upto: Watermark | None = None
    ) -> builtins.list[DailySummaries]:
        dialect = self._conn.dialect.name
        bounded = upto is not None
        exposures = self._conn.execute(
            text(daily_exposures_sql(dialect, upto=bounded)),
            _params(experiment_key, [], upto),
        ).all()
        changes = (
            self._conn.execute(
                text(daily_sql(metric, dialect, upto=bounded)),
                _params(experiment_key, [metric], upto),
            )
            .mappings()
            .all()
        )
        return accumulate_daily(metric, [(a, d, int(n)) for a, d, n in exposures], changes)


def accumulate_daily(
    metric: Metric,
    exposures: Sequence[tuple[str, str, int]],
    changes: Sequence[Any],
) -> builtins.list[DailySummaries]:
    """Running totals over days of the per-day exposure counts and sum increments."""
    ratio = metric.kind is MetricKind.RATIO
    fields = (
        ("d_sum", "d_sum_sq", "d_den", "d_den_sq", "d_cross") if ratio else ("d_sum", "d_sum_sq")
    )
    days = sorted({d for _, d, _ in exposures} | {str(c["day"]) for c in changes})
    arms = sorted({a for a, _, _ in exposures})
    n: dict[str, int] = dict.fromkeys(arms, 0)
    totals: dict[str, list[float]] = {a: [0.0] * len(fields) for a in arms}
    by_day_exposures: dict[str, list[tuple[str, int]]] = {}
    for arm, day, count in exposures:
        by_day_exposures.setdefault(day, []).append((arm, count))
    by_day_changes: dict[str, list[Any]] = {}
    for change in changes:
        by_day_changes.setdefault(str(change["day"]), []).append(change)
    series = []
    for day in days:
        for arm, count in by_day_exposures.get(day, []):
            n[arm] += count
        for change in by_day_changes.get(day, []):
            running = totals.setdefault(change["arm_key"], [0.0] * len(fields))
            for k, name in enumerate(fields):
                running[k] += float(change[name] or 0)
        snapshot: dict[str, Summary] = {}
        for arm in arms:
            t = totals[arm]
            snapshot[arm] = RatioSummary(n[arm], *t) if ratio else ArmSummary(n[arm], t[0], t[1])
        series.append(DailySummaries(date.fromisoformat(day), snapshot))
    return series


# The queries published for analysts under analysis/ (a test keeps the files in sync):
# a binary conversion with a 7-day attribution window and 14-day CUPED covariate, a revenue sum,
# and revenue per session as a ratio metric.
PUBLISHED_METRICS = (
    Metric(
        "conversion", MetricKind.BINARY, window_seconds=7 * 86400, cuped_lookback_seconds=14 * 86400
    ),
    Metric("revenue", MetricKind.CONTINUOUS),
    Metric("revenue_per_session", MetricKind.RATIO, event="revenue", denominator="session"),
)


def published_queries() -> dict[str, str]:
    """``{file name: SQL}`` for ``analysis/``."""
    header = (
        "-- Generated by abkit.store.analysis.published_queries(); do not edit by hand.\n"
        "-- Per-arm sufficient statistics of one experiment, as the worker computes them.\n"
        "-- Parameters: :experiment_key; :e0 = 'conversion', :e1 = 'revenue', :e2 = 'session'.\n"
        "-- Metric 0: conversion (binary, 7-day window, CUPED on the 14 days before exposure)\n"
        "-- Metric 1: revenue (continuous: sum of values)\n"
        "-- Metric 2: revenue per session (ratio; d = sessions)\n"
        "-- mean = s / n, variance = (ss - s * s / n) / (n - 1).\n\n"
    )
    daily_header = (
        "-- Generated by abkit.store.analysis.published_queries(); do not edit by hand.\n"
        "-- Per (arm, day) changes of the revenue sums; accumulate over days (and add the\n"
        "-- exposures per day from daily_exposures.{dialect}.sql) for the cumulative series.\n"
        "-- Parameters: :experiment_key; :e0 = 'revenue'.\n\n"
    )
    files = {}
    for dialect in ("postgresql", "sqlite"):
        files[f"sufficient_statistics.{dialect}.sql"] = header + summary_sql(
            PUBLISHED_METRICS, dialect
        )
        files[f"daily_increments.{dialect}.sql"] = daily_header.format(dialect=dialect) + daily_sql(
            PUBLISHED_METRICS[1], dialect
        )
        files[f"daily_exposures.{dialect}.sql"] = (
            "-- Generated by abkit.store.analysis.published_queries(); do not edit by hand.\n"
            "-- Units first exposed per (arm, UTC day). Parameter: :experiment_key.\n\n"
        ) + daily_exposures_sql(dialect)
    return files


if __name__ == "__main__":  # python -m abkit.store.analysis DIRECTORY  (make analysis-sql)
    import sys
    from pathlib import Path

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "analysis")
    for name, sql in published_queries().items():
        (target / name).write_text(sql)
