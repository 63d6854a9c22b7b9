"""Probe: would a look be cheaper with each unit's value kept in a table? (#16; BENCHMARKS.md,
incremental looks.)

A look now reads, for each unit a new event touches, its exposure and its whole event history.
The alternative the issue names keeps per unit its running value (beside its arm), so a look
would read one row per touched unit instead of two index descents -- and write it back. This
probe prices exactly that write against the read, on one table of ``--units`` units (random
``md5`` ids like real unit ids, arm, exposure time and two values), fresh database:

* ``read`` -- the touched units' rows joined with their increments and summed per arm, with the
  sums a look needs (``sum``, ``sum_sq`` after minus before): what the look would cost if the
  rows never had to change, and the same work as the bare join of the new events with their
  exposures;
* ``update`` -- the same join as an ``UPDATE ... FROM`` that adds the increments and returns the
  new values, summed per arm the same way: what the look would cost keeping the values.

For an unlogged table (a cache that a crash empties) and an ordinary one; fill factor 80 so the
updates can stay on their page (HOT, no index write); ``--touched`` units (default 500,000: 1 %
new events at 10 M units touch about that many); 3 interleaved rounds, medians. Each table is
vacuumed (untimed) before its read, so the read sees a clean table, not the dead row versions
the previous round's update left (which slow an unvacuumed read of the logged table up to 3x).

A measurement aid, not a benchmark with a goal:

    .venv/bin/python tests/benchmarks/probe_unit_values.py --units 10000000 --touched 500000
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg
from common import scratch_database

TABLES = {"unlogged": "CREATE UNLOGGED TABLE", "logged": "CREATE TABLE"}
READ = """SELECT u.arm_key, count(*), sum(d.a0), sum((u.y0 + d.a0) ^ 2 - u.y0 ^ 2)
FROM d JOIN {t} AS u ON u.experiment_key = 'exp' AND u.unit_id = d.unit_id
GROUP BY u.arm_key"""
UPDATE = """WITH up AS (
    UPDATE {t} AS u SET y0 = u.y0 + d.a0, y1 = u.y1 + d.a1
    FROM d WHERE u.experiment_key = 'exp' AND u.unit_id = d.unit_id
    RETURNING u.arm_key, u.y0, d.a0
)
SELECT arm_key, count(*), sum(a0), sum(y0 ^ 2 - (y0 - a0) ^ 2) FROM up GROUP BY arm_key"""


def build(conn: psycopg.Connection, units: int, touched: int) -> None:
    conn.execute("SET maintenance_work_mem = '512MB'")
    for name, create in TABLES.items():
        conn.execute(
            f"{create} uv_{name} (experiment_key text, unit_id text, arm_key text, "
            "exposed_at timestamptz, y0 float8, y1 float8) WITH (fillfactor = 80)"
        )
        conn.execute(
            f"INSERT INTO uv_{name} SELECT 'exp', md5(i::text), "
            "CASE WHEN i %% 2 = 0 THEN 'control' ELSE 'treatment' END, now(), "
            "(i %% 7)::float8, (i %% 3)::float8 FROM generate_series(1, %s) AS i",
            (units,),
        )
        conn.execute(f"ALTER TABLE uv_{name} ADD PRIMARY KEY (experiment_key, unit_id)")
    conn.execute(
        "CREATE TABLE d AS SELECT md5(i::text) AS unit_id, 1.0::float8 AS a0, 2.0::float8 AS a1 "
        "FROM (SELECT DISTINCT (random() * (%s - 1))::int + 1 AS i "
        "      FROM generate_series(1, %s)) AS s LIMIT %s",
        (units, touched * 2, touched),
    )
    conn.commit()
    conn.autocommit = True
    for name in (*(f"uv_{n}" for n in TABLES), "d"):
        conn.execute(f"VACUUM ANALYZE {name}")
    conn.autocommit = False


def timed(conn: psycopg.Connection, sql: str, touched: int) -> float:
    start = time.perf_counter()
    rows = conn.execute(sql).fetchall()
    conn.commit()
    elapsed = time.perf_counter() - start
    if sum(r[1] for r in rows) != touched:
        raise SystemExit(f"invalid run: {sum(r[1] for r in rows)} rows joined, not {touched}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=10_000_000)
    parser.add_argument("--touched", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with scratch_database() as url:
        dsn = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn) as conn:
            started = time.perf_counter()
            build(conn, args.units, args.touched)
            print(f"built {args.units:,} units in {time.perf_counter() - started:.0f} s")
            conn.execute("SET jit = off")
            conn.execute("SET work_mem = '256MB'")
            conn.commit()
            times: dict[tuple[str, str], list[float]] = {}
            for r in range(args.rounds):
                for name in TABLES:
                    conn.autocommit = True
                    conn.execute(f"VACUUM uv_{name}")
                    conn.autocommit = False
                    for kind, sql in (("read", READ), ("update", UPDATE)):
                        t = timed(conn, sql.format(t=f"uv_{name}"), args.touched)
                        times.setdefault((name, kind), []).append(t)
                        print(f"round {r + 1}: {name:8} {kind:6} {t:6.2f} s", flush=True)
            for name in TABLES:
                read = statistics.median(times[(name, "read")])
                update = statistics.median(times[(name, "update")])
                print(
                    f"{name}: read {read:.2f} s, update {update:.2f} s "
                    f"(medians of {args.rounds}): update / read = {update / read:.2f}"
                )


if __name__ == "__main__":
    main()
