"""What the PostgreSQL benchmarks share: a scratch database, and the analysis under test.

Benchmarks run as scripts (``python tests/benchmarks/bench_x.py``), so this module is imported
from the script's own directory.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from abkit.core.metrics import Metric
from abkit.store import migrate
from abkit.store.analysis import ANALYSIS_WORK_MEM
from abkit.store.engine import create_store_engine

ADMIN_URL = os.environ.get(
    "ABKIT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)

# The analysis benchmarks' experiment 'bench': a binary conversion and a continuous revenue,
# both with a 7-day attribution window.
METRICS = [
    Metric("conversion", "binary", window_seconds=7 * 86400),
    Metric("revenue", "continuous", window_seconds=7 * 86400),
]
# The goal's baseline: the same rows (the experiment's exposures joined to the events of its
# metrics) grouped the way any per-unit statistic must be -- per unit, then per arm -- with bare
# SUMs instead of abkit's windowed, per-metric CASE expressions.
BARE = """
SELECT arm_key, COUNT(*), SUM(y), SUM(y * y) FROM (
    SELECT x.arm_key, x.unit_id, SUM(v.value) AS y
    FROM exposures AS x
    LEFT JOIN events AS v ON v.unit_id = x.unit_id AND v.metric IN ('conversion', 'revenue')
    WHERE x.experiment_key = 'bench'
    GROUP BY x.arm_key, x.unit_id
) AS per_unit
GROUP BY arm_key
"""


# The fair per-unit baseline: grouped by the unit alone (one exposure per unit and experiment),
# the arm carried along -- the plan abkit's own query can use.
FAIR = """
SELECT arm_key, COUNT(*), SUM(y), SUM(y * y) FROM (
    SELECT x.unit_id, MIN(x.arm_key) AS arm_key, SUM(v.value) AS y
    FROM exposures AS x
    LEFT JOIN events AS v ON v.unit_id = x.unit_id AND v.metric IN ('conversion', 'revenue')
    WHERE x.experiment_key = 'bench'
    GROUP BY x.unit_id
) AS per_unit
GROUP BY arm_key
"""
# The floor: one GROUP BY arm over the same join. It cannot yield a sum of squares of per-unit
# values (no variance, so no test), so nothing that analyses an experiment can be as cheap.
JOIN_ONLY = """
SELECT x.arm_key, COUNT(*), SUM(v.value)
FROM exposures AS x
LEFT JOIN events AS v ON v.unit_id = x.unit_id AND v.metric IN ('conversion', 'revenue')
WHERE x.experiment_key = 'bench'
GROUP BY x.arm_key
"""
PER_UNIT = {"arm_unit": BARE, "unit_arm_carried": FAIR}


def time_baselines(conn: sa.Connection) -> dict[str, float]:
    """One timing (seconds) of each per-unit baseline under PostgreSQL's plan and under abkit's
    planner settings, and of the join-only floor. Call it interleaved with abkit's query."""
    times: dict[str, float] = {}
    for name, sql in PER_UNIT.items():
        for streamed in (False, True):
            started = time.perf_counter()
            run_bare(conn, streamed=streamed, sql=sql)
            times[f"{name}{'_streamed' if streamed else ''}"] = time.perf_counter() - started
    started = time.perf_counter()
    run_bare(conn, streamed=False, sql=JOIN_ONLY)
    times["join_only"] = time.perf_counter() - started
    return times


def baseline_summary(ours: list[float], runs: list[dict[str, float]]) -> dict[str, object]:
    """abkit's median against the fastest per-unit baseline's median, and against the floor."""
    medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    per_unit = min(v for k, v in medians.items() if k != "join_only")
    query = statistics.median(ours)
    return {
        "query_s": round(query, 3),
        "baselines_median_s": {k: round(v, 3) for k, v in medians.items()},
        "ratio_to_fastest_per_unit": round(query / per_unit, 3),
        "fastest_per_unit": min((k for k in medians if k != "join_only"), key=lambda k: medians[k]),
        "ratio_to_join_only_floor": round(query / medians["join_only"], 3),
    }


def run_bare(conn: sa.Connection, *, streamed: bool, sql: str = BARE) -> None:
    """The baseline (or another plain query), in a transaction of its own: with PostgreSQL's own
    choice of plan, or (``streamed``) under the planner settings abkit's analysis transaction
    uses (no hash join). Both get abkit's ``work_mem``; the goal's ratio is taken against the
    faster of the two."""
    conn.execute(sa.text(f"SET LOCAL work_mem = '{ANALYSIS_WORK_MEM}'"))
    if streamed:
        conn.execute(sa.text("SET LOCAL enable_hashjoin = off"))
    conn.execute(sa.text(sql)).all()
    conn.commit()


@contextmanager
def scratch_database() -> Iterator[str]:
    """A new, migrated PostgreSQL database for one benchmark run; its URL. Dropped at the end."""
    admin = create_store_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"abkit_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        engine = create_store_engine(url)
        migrate.upgrade(engine)
        engine.dispose()
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def grow(engine: sa.Engine, start: int, stop: int, events_per_unit: int = 5) -> None:
    """Exposed units ``start+1 .. stop`` of experiment 'bench' (arms alternating), each with
    ``events_per_unit`` events (the first a conversion, the rest revenue) spread over ten days,
    generated inside PostgreSQL in chunks of a million units; then ``VACUUM ANALYZE``."""
    chunk = 1_000_000
    for lo in range(start, stop, chunk):
        hi = min(lo + chunk, stop)
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    """
                    INSERT INTO exposures (experiment_key, unit_id, arm_key, model_version,
                                           config_checksum, exposed_at, trace_id, span_id)
                    SELECT 'bench', 'user-' || g,
                           CASE WHEN g % 2 = 0 THEN 'control' ELSE 'treatment' END,
                           CASE WHEN g % 2 = 0 THEN 'v1' ELSE 'v2' END, '0123456789abcdef',
                           timestamptz '2026-03-01' + (g % 86400) * interval '1 second', '', ''
                    FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g
                    """
                ),
                {"lo": lo + 1, "hi": hi},
            )
            conn.execute(
                sa.text(
                    """
                    INSERT INTO events (event_id, unit_id, metric, value, occurred_at,
                                        trace_id, span_id)
                    SELECT 'e' || u || '-' || k, 'user-' || u,
                           CASE WHEN k = 0 THEN 'conversion' ELSE 'revenue' END,
                           ((u * 31 + k * 17) % 100) / 10.0,
                           timestamptz '2026-03-01' + ((u * 7 + k * 3600) % (10 * 86400))
                               * interval '1 second',
                           '', ''
                    FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS u,
                         generate_series(0, CAST(:last AS int)) AS k
                    """
                ),
                {"lo": lo + 1, "hi": hi, "last": events_per_unit - 1},
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE exposures"))
        conn.execute(sa.text("VACUUM ANALYZE events"))


def add_bench_experiment(engine: sa.Engine, policy: dict[str, object]) -> None:
    """The experiment row of 'bench' (running, arms control/treatment) with ``policy``, so a
    real worker look can run on the generated data."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO experiments (key, name, description, model, status, salt, "
                "hash_version, coverage, overrides, policy, config_checksum, revision, "
                "created_at, updated_at, started_at) VALUES ('bench', '', '', 'bench', "
                "'running', 'bench', 1, 1.0, '{}', CAST(:policy AS JSONB), "
                "'0123456789abcdef', 1, now(), now(), now())"
            ),
            {"policy": json.dumps(policy)},
        )
        conn.execute(
            sa.text(
                "INSERT INTO arms (experiment_key, key, position, model_version, weight, "
                "is_control) VALUES ('bench', 'control', 0, 'v1', 0.5, true), "
                "('bench', 'treatment', 1, 'v2', 0.5, false)"
            )
        )
