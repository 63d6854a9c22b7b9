"""Benchmark: the analysis query of one experiment on PostgreSQL, against a bare GROUP BY.

Issue #3's goal: with 1,000,000 exposed units and 5,000,000 events, the sufficient-statistics
query (two metrics: a binary conversion and a continuous revenue, 7-day window) takes at most
1.5x a bare ``GROUP BY arm`` over the same join, measured in the same run; and the statistics of
one look (all tests for two arms and one metric, from the summaries) take at most 5 ms.

    .venv/bin/python tests/benchmarks/bench_analysis.py [--units 1000000] [--events-per-unit 5]

Needs a PostgreSQL (ABKIT_TEST_POSTGRES_URL, default the local server); creates and drops its own
database. Data is generated inside PostgreSQL (generate_series), so loading is fast and the
script itself holds no rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import sqlalchemy as sa
from common import BARE, METRICS, grow, run_bare, scratch_database

from abkit.core.stats import (
    SequentialMonitor,
    fixed_horizon_test,
    sequential_srm_test,
    sequential_test,
    srm_test,
)
from abkit.store.analysis import SqlAnalysis
from abkit.store.engine import create_store_engine

# Reported for context: one GROUP BY arm over the join. It cannot yield a sum of squares of
# per-unit values, so it is a floor, not a like-for-like baseline.
JOIN_ONLY = """
SELECT x.arm_key, COUNT(*), SUM(v.value)
FROM exposures AS x
LEFT JOIN events AS v ON v.unit_id = x.unit_id AND v.metric IN ('conversion', 'revenue')
WHERE x.experiment_key = 'bench'
GROUP BY x.arm_key
"""


def timed(fn, repeats: int) -> list[float]:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--units", type=int, default=1_000_000)
    parser.add_argument("--events-per-unit", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with scratch_database() as url:
        engine = create_store_engine(url)
        started = time.perf_counter()
        grow(engine, 0, args.units, args.events_per_unit)
        load_seconds = time.perf_counter() - started

        with engine.connect() as conn:
            analysis = SqlAnalysis(conn)
            summaries = analysis.summaries("bench", METRICS)
            conn.execute(sa.text(BARE)).all()  # warm the cache for both equally
            conn.commit()
            ours, bare, bare_streamed, join_only = [], [], [], []

            def our_query() -> None:
                analysis.summaries("bench", METRICS)
                conn.commit()

            for _ in range(args.repeats):  # interleaved, so drift hits all alike
                ours += timed(our_query, 1)
                bare += timed(lambda: run_bare(conn, streamed=False), 1)
                bare_streamed += timed(lambda: run_bare(conn, streamed=True), 1)
                join_only += timed(lambda: run_bare(conn, streamed=False, sql=JOIN_ONLY), 1)
            plan = analysis.plan("bench", METRICS)
            conn.commit()

        control, treatment = (
            summaries["conversion"]["control"],
            summaries["conversion"]["treatment"],
        )
        counts = [control.n, treatment.n]

        def one_look() -> None:
            fixed_horizon_test(control, treatment)
            sequential_test(control, treatment)
            SequentialMonitor().update(control, treatment)
            srm_test(counts, [0.5, 0.5])
            sequential_srm_test(counts, [0.5, 0.5])

        look = timed(one_look, 200)
        result = {
            "benchmark": "analysis_query_postgresql",
            "units": args.units,
            "events": args.units * args.events_per_unit,
            "load_seconds": round(load_seconds, 1),
            "query_median_s": round(statistics.median(ours), 3),
            "bare_group_by_median_s": round(statistics.median(bare), 3),
            "bare_group_by_streamed_median_s": round(statistics.median(bare_streamed), 3),
            "ratio": round(
                statistics.median(ours)
                / min(statistics.median(bare), statistics.median(bare_streamed)),
                3,
            ),
            "join_only_median_s": round(statistics.median(join_only), 3),
            "ratio_to_join_only": round(statistics.median(ours) / statistics.median(join_only), 3),
            "ratio_goal": 1.5,
            "look_stats_median_ms": round(statistics.median(look) * 1000, 3),
            "look_stats_goal_ms": 5.0,
            "n_per_arm": counts,
        }
        print(json.dumps(result))
        print(plan)
        print(
            f"analysis query {result['query_median_s']} s vs bare per-unit GROUP BY "
            f"{result['bare_group_by_median_s']} s (PostgreSQL's plan), "
            f"{result['bare_group_by_streamed_median_s']} s (abkit's planner settings): "
            f"ratio to the faster {result['ratio']} (goal <= 1.5); "
            f"vs join-only GROUP BY arm {result['join_only_median_s']} s: "
            f"{result['ratio_to_join_only']}; "
            f"statistics of one look {result['look_stats_median_ms']} ms (goal <= 5)"
        )
        engine.dispose()


if __name__ == "__main__":
    main()
