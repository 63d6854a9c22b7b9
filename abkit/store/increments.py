"""Maintained statistics in SQL: each look adds only what arrived since the last one.

:func:`changes_sql` renders one query that, for the units a change touches, computes each unit's
contribution to the per-(arm, day) sums at watermark ``A`` (exposures numbered ``<= :ax``,
events ``<= :ae``) minus its contribution at watermark ``B`` -- the core's arithmetic
(:mod:`abkit.core.increments`) -- and sums the differences per arm and day. Which units it
touches is the *mode*:

* ``all`` -- every unit exposed up to ``A`` (the first look; ``B`` is empty);
* ``new`` -- units exposed after ``B``, and units exposed before it with an event numbered after
  it (an ordinary look: ``B`` is the state's watermark, ``A`` the store's);
* ``units`` -- the given units (erasure, :mod:`abkit.store.erasure`: ``A`` is behind ``B``, so
  the difference takes out what they contributed).

A look runs :func:`totals_sql`: the same difference per unit, summed per arm without the
per-day path (half the work or less); :func:`changes_sql`, per day, brings the per-day rows up
to the totals when the series is read.

Per unit and day it sums the increments ``a`` of the unit's value with every event up to ``A``
and with those up to ``B``; running totals over days (a window per unit) give the value ``y``
before and after each day, so a day changes ``sum`` by ``F(y) - F(y - a)`` and ``sum_sq`` by
``F(y)**2 - F(y - a)**2`` (``F`` is ``min(1, .)`` for a binary metric, else the identity); ratio
terms likewise. The unit's own terms -- ``n`` and the CUPED covariate ``x`` (``xs``, ``xss``,
``xys = x * final y``) -- go to its exposure day: each row is read twice through a two-row
``parts`` table, once for its day and (first row of the unit only) once for the exposure day,
which keeps the query one streaming pass on PostgreSQL.

The watermark comes from :meth:`SqlMaintained.watermark`: on PostgreSQL, ingestion transactions
hold a shared advisory lock (:func:`ingestion_lock`) and the watermark takes it exclusively for
an instant, so every number at or below the sequences' last values belongs to a transaction that
has ended -- a sequence hands out numbers in call order, not commit order, and without the
barrier a slow transaction's rows would appear below a watermark already passed. SQLite has one
writer at a time and numbers rows inside it, so its committed counters are the watermark.
"""

from __future__ import annotations

import builtins
import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection, bindparam, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from abkit.core.increments import (
    UNDATED,
    DayChange,
    MetricState,
    Watermark,
    metric_from_dict,
    metric_key,
    metric_to_dict,
)
from abkit.core.metrics import Metric, MetricKind
from abkit.errors import ConflictError
from abkit.store.analysis import (
    ANALYSIS_WORK_MEM,
    _after_exposure,
    _event_params,
    _plus,
    _unit_value,
)
from abkit.store.erasure import erase_units
from abkit.store.schema import Base

Mode = Literal["all", "new", "units"]

INGESTION_LOCK = 0x61626B6974  # "abkit": the advisory lock key of the ingestion barrier
REFRESH_LOCKS = 0x61626B69  # "abki": the space of the per-experiment refresh locks
LOOKUP_SHARE = 0.02
"""Below this many new rows per stored exposure, a look looks the touched units up one by one
(measured crossover at 10 M units: about 5 %)."""

_WATERMARKS = Base.metadata.tables["analysis_watermarks"]
_DAYS = Base.metadata.tables["analysis_days"]


def ingestion_lock(conn: Connection) -> None:
    """Taken (shared) by every transaction that inserts exposures or events on PostgreSQL,
    before it draws a number; held to its end."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"SELECT pg_advisory_xact_lock_shared({INGESTION_LOCK})"))


def _day(column: str, dialect: str) -> str:
    """The UTC day of a timestamp: a ``date`` on PostgreSQL (cheaper to compute and group than
    text), ``YYYY-MM-DD`` text on SQLite; both read back as that text."""
    if dialect == "postgresql":
        return f"CAST(({column} AT TIME ZONE 'UTC') AS date)"
    return f"substr({column}, 1, 10)"


def _binary(expr: str) -> str:
    return f"(CASE WHEN {expr} > 0 THEN 1 ELSE 0 END)"


def _exposed(mode: Mode, in_list: str, lookups: bool) -> str:
    """The units a change touches, one row each (the primary key is (experiment, unit)), with
    ``in_a``/``in_b``: exposed up to ``A``/``B``."""
    columns = "unit_id, arm_key, exposed_at"
    if mode == "all":
        return (
            f"SELECT {columns}, 1 AS in_a, 0 AS in_b FROM exposures\n"
            "    WHERE experiment_key = :experiment_key AND seq <= :ax"
        )
    if mode == "units":
        return (
            f"SELECT {columns},\n"
            "        CASE WHEN seq <= :ax THEN 1 ELSE 0 END AS in_a,\n"
            "        CASE WHEN seq <= :bx THEN 1 ELSE 0 END AS in_b\n"
            "    FROM exposures\n"
            "    WHERE experiment_key = :experiment_key AND unit_id IN :units"
        )
    # Two disjoint sets: exposed since B (nothing to subtract), and exposed before B with an
    # event since B (old value out, new value in).
    since = (
        f"SELECT {columns}, 1 AS in_a, 0 AS in_b FROM exposures\n"
        "    WHERE experiment_key = :experiment_key AND seq > :bx AND seq <= :ax\n"
        "    UNION ALL\n"
    )
    if not lookups:
        # Many arrived: a semi-join, which PostgreSQL runs as one parallel hash of the new
        # events' units shared by its workers (the DISTINCT below is built and sorted again in
        # every worker: 2 s of each at 500 k new events).
        return since + (
            "    SELECT x.unit_id, x.arm_key, x.exposed_at, 1 AS in_a, 1 AS in_b\n"
            "    FROM exposures AS x\n"
            "    WHERE x.experiment_key = :experiment_key AND x.seq <= :bx AND x.unit_id IN (\n"
            "        SELECT v.unit_id FROM events AS v\n"
            f"        WHERE v.seq > :be AND v.seq <= :ae AND v.metric IN ({in_list})\n"
            "    )"
        )
    # Few arrived: the units of the new events are looked up in unit order, so consecutive
    # lookups share index pages.
    return since + (
        "    SELECT x.unit_id, x.arm_key, x.exposed_at, 1 AS in_a, 1 AS in_b\n"
        "    FROM (\n"
        "        SELECT DISTINCT v.unit_id FROM events AS v\n"
        f"        WHERE v.seq > :be AND v.seq <= :ae AND v.metric IN ({in_list})\n"
        "        ORDER BY v.unit_id\n"
        "    ) AS moved\n"
        "    JOIN exposures AS x\n"
        "        ON x.experiment_key = :experiment_key AND x.unit_id = moved.unit_id\n"
        "    WHERE x.seq <= :bx"
    )


def changes_sql(
    metrics: Sequence[Metric], dialect: str, mode: Mode, *, lookups: bool = True
) -> str:
    """Per (arm, day): contribution at ``A`` minus contribution at ``B`` (module docstring).
    ``lookups``: few units arrived, look them up one by one (:meth:`SqlMaintained._plan`).

    Columns: ``arm_key, day, n`` and per metric ``i``: ``s{i}, ss{i}, k{i}`` (attributed
    events), with CUPED ``xs{i}, xss{i}, xys{i}``, for a ratio ``ds{i}, dss{i}, nds{i}``.
    """
    events = _event_params(metrics)
    in_list = ", ".join(f":{p}" for p in events.values())
    before = mode != "all"
    old = " AND v.seq <= :be"
    # The join reads events up to the later watermark (:je); each side counts its own. Only an
    # erasure (mode units) has A before B.
    new = " AND v.seq <= :ae" if mode == "units" else ""
    sums: list[str] = []  # unit_days: increments per (unit, day)
    runs: list[str] = []  # running: running and final totals per unit
    terms: list[str] = []  # changes: the row's terms, after minus before
    outs: list[str] = []  # the per (arm, day) sums

    def both(name: str, predicate: str, value: str) -> None:
        sums.append(f"SUM(CASE WHEN ({predicate}){new} THEN {value} ELSE 0 END) AS {name}a")
        if before:
            sums.append(f"SUM(CASE WHEN ({predicate}){old} THEN {value} ELSE 0 END) AS {name}b")

    def term(name: str, after: str, part: int) -> None:
        """``after`` is written for side ``a``; ``{s}`` stands for the side."""
        expr = f"in_a * ({after.format(s='a')})"
        if before:
            expr += f" - in_b * ({after.format(s='b')})"
        terms.append(f"{expr} AS {name}")
        outs.append(f"SUM(CASE WHEN part = {part} THEN {name} ELSE 0 END) AS {name}")

    for i, m in enumerate(metrics):
        y = _after_exposure(m, events[m.event], dialect)
        unit = "1" if m.kind in (MetricKind.BINARY, MetricKind.COUNT) else "v.value"
        both(f"a{i}", y, unit)
        counted = y
        sides = ("a", "b") if before else ("a",)
        runs += [f"a{i}{s}, SUM(a{i}{s}) OVER w AS ya{i}{s}" for s in sides]
        f = _binary if m.kind is MetricKind.BINARY else (lambda e: f"({e})")
        now, was = f(f"ya{i}{{s}}"), f(f"ya{i}{{s}} - a{i}{{s}}")
        term(f"s{i}", f"{now} - {was}", 0)
        term(f"ss{i}", f"{now} * {now} - {was} * {was}", 0)
        if m.kind is MetricKind.RATIO:
            d = _after_exposure(m, events[m.denominator], dialect)
            counted = f"({y}) OR ({d})"
            both(f"c{i}", d, "v.value")
            runs += [f"c{i}{s}, SUM(c{i}{s}) OVER w AS yc{i}{s}" for s in sides]
            yc, wc = f"yc{i}{{s}}", f"(yc{i}{{s}} - c{i}{{s}})"
            term(f"ds{i}", f"c{i}{{s}}", 0)
            term(f"dss{i}", f"{yc} * {yc} - {wc} * {wc}", 0)
            term(f"nds{i}", f"{now} * {yc} - {was} * {wc}", 0)
        if m.cuped_lookback_seconds is not None:
            start = _plus("x.exposed_at", -m.cuped_lookback_seconds, dialect)
            pre = (
                f"v.metric = :{events[m.event]} AND v.occurred_at < x.exposed_at "
                f"AND v.occurred_at >= {start}"
            )
            both(f"p{i}", pre, unit)
            runs += [f"SUM(p{i}{s}) OVER u AS tp{i}{s}" for s in sides]
            runs += [f"SUM(a{i}{s}) OVER u AS ta{i}{s}" for s in sides]
            xv, yv = f(f"tp{i}{{s}}"), f(f"ta{i}{{s}}")
            term(f"xs{i}", xv, 1)
            term(f"xss{i}", f"{xv} * {xv}", 1)
            term(f"xys{i}", f"{xv} * {yv}", 1)
        both(f"k{i}", counted, "1")
        runs += [f"k{i}{s}" for s in sides]
        term(f"k{i}", f"k{i}{{s}}", 0)

    day = (
        f"CASE WHEN v.occurred_at >= x.exposed_at THEN {_day('v.occurred_at', dialect)} "
        f"ELSE {_day('x.exposed_at', dialect)} END"
    )
    seq_bound = "v.seq <= :je"
    n_term = "in_a - in_b" if before else "in_a"
    sums_sql = ",\n        ".join(sums)
    runs_sql = ",\n        ".join(runs)
    terms_sql = ",\n        ".join(terms)
    outs_sql = ",\n    ".join(outs)
    # Built only from validated metric definitions (integers, bind-parameter names); every value
    # a user supplies is a bind parameter.
    return f"""WITH exposed AS (
    {_exposed(mode, in_list, lookups)}
),
unit_days AS (
    SELECT
        x.unit_id,
        MIN(x.arm_key) AS arm_key,
        MIN(x.in_a) AS in_a,
        MIN(x.in_b) AS in_b,
        MIN({_day("x.exposed_at", dialect)}) AS exposure_day,
        {day} AS day,
        {sums_sql}
    FROM exposed AS x
    LEFT JOIN events AS v
        ON v.unit_id = x.unit_id AND v.metric IN ({in_list}) AND {seq_bound}
    GROUP BY x.unit_id, {day}
),
running AS (
    SELECT
        arm_key, in_a, in_b, day, exposure_day,
        ROW_NUMBER() OVER w AS r,
        {runs_sql}
    FROM unit_days
    WINDOW w AS (PARTITION BY unit_id ORDER BY day ROWS UNBOUNDED PRECEDING),
        u AS (PARTITION BY unit_id)
),
changes AS (
    SELECT
        arm_key, day, exposure_day, r,
        {n_term} AS n,
        {terms_sql}
    FROM running
)
SELECT
    arm_key,
    CASE WHEN part = 0 THEN day ELSE exposure_day END AS day,
    SUM(CASE WHEN part = 1 THEN n ELSE 0 END) AS n,
    {outs_sql}
FROM changes CROSS JOIN (SELECT 0 AS part UNION ALL SELECT 1 AS part) AS parts
WHERE part = 0 OR r = 1
GROUP BY arm_key, CASE WHEN part = 0 THEN day ELSE exposure_day END
"""


def totals_sql(metrics: Sequence[Metric], dialect: str, mode: Mode, *, lookups: bool = True) -> str:
    """What :func:`changes_sql` gives summed over days -- one row per arm, ``day`` empty --
    computed per unit without the per-day path: what a look needs, at about half the cost.

    The same columns. ``mode`` is ``new`` or ``units``; ``lookups`` as for :func:`changes_sql`.

    On PostgreSQL each touched unit's values come from one aggregate over its events beside its
    exposure row (``LATERAL``), not from a join grouped by unit: a unit has one exposure row, so
    the grouping only re-collects what the lookup already had together, and PostgreSQL would
    do it in two phases (per worker, then again after gathering). SQLite has no ``LATERAL``
    and keeps the grouped join. Both give the same numbers (the conformance suite runs both).
    """
    events = _event_params(metrics)
    in_list = ", ".join(f":{p}" for p in events.values())
    old = " AND v.seq <= :be"
    new = " AND v.seq <= :ae" if mode == "units" else ""
    values: list[tuple[str, str]] = []  # (per-unit aggregate, column)
    sums: list[str] = []

    def side(name: str, kind: MetricKind, predicate: str) -> None:
        values.append((_unit_value(kind, f"({predicate}){new}"), f"{name}a"))
        values.append((_unit_value(kind, f"({predicate}){old}"), f"{name}b"))

    def total(name: str, expr: str) -> None:
        sums.append(f"SUM(in_a * {expr.format(s='a')} - in_b * {expr.format(s='b')}) AS {name}")

    for i, m in enumerate(metrics):
        side(f"y{i}", m.kind, _after_exposure(m, events[m.event], dialect))
        total(f"s{i}", f"y{i}{{s}}")
        total(f"ss{i}", f"y{i}{{s}} * y{i}{{s}}")
        if m.kind is MetricKind.RATIO:
            side(f"d{i}", MetricKind.CONTINUOUS, _after_exposure(m, events[m.denominator], dialect))
            total(f"ds{i}", f"d{i}{{s}}")
            total(f"dss{i}", f"d{i}{{s}} * d{i}{{s}}")
            total(f"nds{i}", f"y{i}{{s}} * d{i}{{s}}")
        if m.cuped_lookback_seconds is not None:
            start = _plus("x.exposed_at", -m.cuped_lookback_seconds, dialect)
            pre = (
                f"v.metric = :{events[m.event]} AND v.occurred_at < x.exposed_at "
                f"AND v.occurred_at >= {start}"
            )
            side(f"x{i}", m.kind, pre)
            total(f"xs{i}", f"x{i}{{s}}")
            total(f"xss{i}", f"x{i}{{s}} * x{i}{{s}}")
            total(f"xys{i}", f"x{i}{{s}} * y{i}{{s}}")
        sums.append(f"0 AS k{i}")
    sums_sql = ",\n    ".join(sums)
    joined = f"v.metric IN ({in_list}) AND v.seq <= :je"
    if dialect == "postgresql":
        # An aggregate over no rows is NULL where the grouped join's NULL row gives 0.
        values_sql = ",\n            ".join(f"COALESCE({e}, 0) AS {c}" for e, c in values)
        unit_values = f"""SELECT x.arm_key, x.in_a, x.in_b, u.*
    FROM exposed AS x
    CROSS JOIN LATERAL (
        SELECT
            {values_sql}
        FROM events AS v
        WHERE v.unit_id = x.unit_id AND {joined}
    ) AS u"""
    else:
        values_sql = ",\n        ".join(f"{e} AS {c}" for e, c in values)
        unit_values = f"""SELECT
        MIN(x.arm_key) AS arm_key,
        MIN(x.in_a) AS in_a,
        MIN(x.in_b) AS in_b,
        {values_sql}
    FROM exposed AS x
    LEFT JOIN events AS v
        ON v.unit_id = x.unit_id AND {joined}
    GROUP BY x.unit_id"""
    # Built only from validated metric definitions (integers, bind-parameter names); every value
    # a user supplies is a bind parameter.
    return f"""WITH exposed AS (
    {_exposed(mode, in_list, lookups)}
),
unit_values AS (
    {unit_values}
)
SELECT
    arm_key,
    '' AS day,
    SUM(in_a - in_b) AS n,
    {sums_sql}
FROM unit_values
GROUP BY arm_key
"""


_COLUMNS = ("s", "ss", "xs", "xss", "xys", "ds", "dss", "nds")


def _changes(rows: Sequence[Any], metrics: Sequence[Metric]) -> dict[str, list[DayChange]]:
    out: dict[str, list[DayChange]] = {m.name: [] for m in metrics}
    for row in rows:
        for i, m in enumerate(metrics):
            values = {c: float(row.get(f"{c}{i}") or 0.0) for c in _COLUMNS}
            change = DayChange(
                row["arm_key"],
                str(row["day"]),
                n=int(row["n"] or 0),
                events=int(row[f"k{i}"] or 0),
                **values,
            )
            if not change.empty:
                out[m.name].append(change)
    return out


class SqlMaintained:
    """The maintained statistics of one transaction (``tx.maintained``)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def watermark(self) -> Watermark:
        """Every exposure and event numbered at or below it has been committed or rolled back.

        On PostgreSQL this waits for the ingestion transactions in flight (a few milliseconds:
        one drain batch) and holds new ones back until the transaction ends: call it in a
        transaction of its own."""
        if self._conn.dialect.name == "postgresql":
            self._conn.execute(text(f"SELECT pg_advisory_xact_lock({INGESTION_LOCK})"))
            row = self._conn.execute(
                text(
                    "SELECT (SELECT CASE WHEN is_called THEN last_value ELSE 0 END "
                    "FROM abkit_exposure_seq), (SELECT CASE WHEN is_called THEN last_value "
                    "ELSE 0 END FROM abkit_event_seq)"
                )
            ).one()
            return Watermark(int(row[0]), int(row[1]))
        values: dict[str, int] = {
            name: value
            for name, value in self._conn.execute(text("SELECT name, value FROM abkit_sequences"))
        }
        return Watermark(int(values.get("exposures", 0)), int(values.get("events", 0)))

    def lock(self, experiment_key: str) -> None:
        """Wait for other refreshes of this experiment, until this transaction ends (PostgreSQL;
        SQLite has one writer at a time anyway). The second worker then starts from the first
        one's committed watermark instead of computing the same changes again."""
        if self._conn.dialect.name == "postgresql":
            digest = hashlib.sha256(experiment_key.encode()).digest()
            self._conn.execute(
                text("SELECT pg_advisory_xact_lock(:space, :key)"),
                {"space": REFRESH_LOCKS, "key": int.from_bytes(digest[:4], "big", signed=True)},
            )

    def load(self, experiment_key: str) -> dict[str, MetricState]:
        marks = self._conn.execute(
            select(_WATERMARKS).where(_WATERMARKS.c.experiment_key == experiment_key)
        ).mappings()
        days: dict[str, list[DayChange]] = {}
        for row in self._conn.execute(
            select(_DAYS).where(_DAYS.c.experiment_key == experiment_key)
        ).mappings():
            days.setdefault(row["metric_key"], []).append(_day_change(row))
        return {
            row["metric_key"]: MetricState(
                metric_from_dict(row["metric"] or {}),
                Watermark(int(row["exposure_seq"]), int(row["event_seq"])),
                int(row["version"]),
                tuple(days.get(row["metric_key"], ())),
                Watermark(int(row["dated_exposure_seq"]), int(row["dated_event_seq"])),
            )
            for row in marks
        }

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
        """``{metric name: [DayChange]}``: contribution at ``after`` minus at ``before`` of the
        units exposed, or with events, in between (or of ``units``); per day, or (``days``
        false) one undated row per arm (the first look's totals come from the full analysis,
        :meth:`abkit.store.analysis.SqlAnalysis.summaries`, which streams)."""
        if not metrics:
            return {}
        mode: Mode = (
            "units" if units is not None else "all" if days and before == Watermark() else "new"
        )
        dialect = self._conn.dialect.name
        lookups = True
        if dialect == "postgresql":
            lookups = self._plan(mode, before, after, days=days)
        render = changes_sql if days else totals_sql
        query = text(render(metrics, dialect, mode, lookups=lookups))
        params: dict[str, Any] = {
            "experiment_key": experiment_key,
            "ax": after.exposures,
            "ae": after.events,
            "bx": before.exposures,
            "be": before.events,
            "je": max(after.events, before.events),
        }
        params.update({p: event for event, p in _event_params(metrics).items()})
        if units is not None:
            query = query.bindparams(bindparam("units", expanding=True))
            params["units"] = list(units)
        rows = self._conn.execute(query, params).mappings().all()
        return _changes(rows, metrics)

    def _plan(self, mode: Mode, before: Watermark, after: Watermark, *, days: bool) -> bool:
        """Planner settings for :meth:`changes`, transaction-local (BENCHMARKS.md, "Incremental
        looks"); whether the query should look the touched units up one by one.

        From every unit (``all``): as the full analysis, stream in unit order, never hash every
        exposed unit. From some: no JIT (compiling costs up to 1.7 s, more than a small look),
        and when few rows arrived compared with the exposures stored (under
        :data:`LOOKUP_SHARE`), look each touched unit up by index rather than let a hash join
        scan every exposure; past that, PostgreSQL's own choice -- except, for the totals, no
        sort: it would sort the touched units by arm in every worker to group them after
        gathering, where hashing two arms costs nothing.
        """
        self._conn.execute(text(f"SET LOCAL work_mem = '{ANALYSIS_WORK_MEM}'"))
        if mode == "all":
            self._conn.execute(text("SET LOCAL enable_hashjoin = off"))
            return False
        self._conn.execute(text("SET LOCAL jit = off"))
        stored = self._conn.execute(
            text("SELECT GREATEST(reltuples, 0) FROM pg_class WHERE relname = 'exposures'")
        ).scalar_one()
        arrived = 0 if mode == "units" else after.drawn_since(before)
        if arrived / max(float(stored), 1.0) < LOOKUP_SHARE:
            self._conn.execute(text("SET LOCAL enable_hashjoin = off"))
            self._conn.execute(text("SET LOCAL enable_mergejoin = off"))
            return True
        if not days:
            self._conn.execute(text("SET LOCAL enable_sort = off"))
        return False

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
        """Add ``changes`` (``drop_undated``: after deleting the undated rows) and set the
        watermarks, if the state is still at ``expected_version`` (``None``: there is no state
        yet); else :class:`ConflictError`."""
        key = metric_key(metric)
        values = {
            "exposure_seq": watermark.exposures,
            "event_seq": watermark.events,
            "dated_exposure_seq": dated.exposures,
            "dated_event_seq": dated.events,
            "updated_at": now,
        }
        if expected_version is None:
            try:  # a conflict aborts the transaction: the caller starts over
                self._conn.execute(
                    insert(_WATERMARKS).values(
                        experiment_key=experiment_key,
                        metric_key=key,
                        metric=metric_to_dict(metric),
                        version=1,
                        **values,
                    )
                )
            except IntegrityError as exc:
                raise ConflictError(f"{experiment_key!r}: another look saved {key} first") from exc
        else:
            moved = self._conn.execute(
                update(_WATERMARKS)
                .where(
                    _WATERMARKS.c.experiment_key == experiment_key,
                    _WATERMARKS.c.metric_key == key,
                    _WATERMARKS.c.version == expected_version,
                )
                .values(version=_WATERMARKS.c.version + 1, **values)
            )
            if moved.rowcount != 1:
                raise ConflictError(f"{experiment_key!r}: another look moved {key} first")
        if drop_undated:
            self._conn.execute(
                delete(_DAYS).where(
                    _DAYS.c.experiment_key == experiment_key,
                    _DAYS.c.metric_key == key,
                    _DAYS.c.day == UNDATED,
                )
            )
        self._add(experiment_key, key, changes)

    def _add(self, experiment_key: str, key: str, changes: Sequence[DayChange]) -> None:
        if not changes:
            return
        where = (_DAYS.c.experiment_key == experiment_key) & (_DAYS.c.metric_key == key)
        existing = {
            (row["arm_key"], row["day"]): _day_change(row)
            for row in self._conn.execute(select(_DAYS).where(where)).mappings()
        }
        # A few rows per arm and day: read, add, write back.
        for change in changes:
            at = (change.arm, change.day)
            fields = {f: getattr(change, f) for f in ("n", *_COLUMNS, "events")}
            if at in existing:
                total = existing[at].plus(change)
                self._conn.execute(
                    update(_DAYS)
                    .where(where, _DAYS.c.arm_key == change.arm, _DAYS.c.day == change.day)
                    .values({f: getattr(total, f) for f in fields})
                )
                existing[at] = total
            else:
                self._conn.execute(
                    insert(_DAYS).values(
                        experiment_key=experiment_key,
                        metric_key=key,
                        arm_key=change.arm,
                        day=change.day,
                        **fields,
                    )
                )
                existing[at] = change

    def erase_units(self, unit_ids: Sequence[str], *, now: datetime) -> int:
        """Subtract what ``unit_ids`` contributed from every state that counts them (before
        they are deleted, in the same transaction); how many states changed."""
        exposed = {
            key
            for (key,) in self._conn.execute(
                text(
                    "SELECT DISTINCT experiment_key FROM exposures WHERE unit_id IN :units"
                ).bindparams(bindparam("units", expanding=True)),
                {"units": list(unit_ids)},
            )
        }
        return erase_units(self, exposed, unit_ids, now)

    def invalidate_before(self, cutoff: datetime) -> int:
        """Drop every state that may count a row older than ``cutoff`` (retention is about to
        delete them): the next look computes it afresh. How many states were dropped.

        A state's earliest day is its first row's; an undated row (a look's totals, not yet
        spread over days) sorts first, so a state holding one is dropped: it may count a unit
        of any day, even when its dated rows all start later."""
        dropped = 0
        first: dict[tuple[str, str], str] = {
            (experiment_key, key): day
            for experiment_key, key, day in self._conn.execute(
                select(_DAYS.c.experiment_key, _DAYS.c.metric_key, func.min(_DAYS.c.day)).group_by(
                    _DAYS.c.experiment_key, _DAYS.c.metric_key
                )
            )
        }
        for row in self._conn.execute(select(_WATERMARKS)).mappings():
            at = (row["experiment_key"], row["metric_key"])
            lookback = (row["metric"] or {}).get("cuped_lookback_seconds") or 0
            reach = (cutoff + timedelta(seconds=int(lookback))).date().isoformat()
            if first.get(at, UNDATED) <= reach:
                self._drop(*at)
                dropped += 1
        return dropped

    def drop(self, experiment_key: str) -> None:
        """Forget the experiment's maintained state (the next look recomputes it)."""
        for key in self.load(experiment_key):
            self._drop(experiment_key, key)

    def _drop(self, experiment_key: str, key: str) -> None:
        for table in (_DAYS, _WATERMARKS):
            self._conn.execute(
                delete(table).where(
                    table.c.experiment_key == experiment_key, table.c.metric_key == key
                )
            )


def _day_change(row: Any) -> DayChange:
    return DayChange(
        row["arm_key"],
        row["day"],
        n=int(row["n"]),
        events=int(row["events"]),
        **{c: float(row[c]) for c in _COLUMNS},
    )
