"""Benchmark: the analysis query of one experiment on PostgreSQL, against a bare GROUP BY.

Issue #3's goal: with 1,000,000 exposed units and 5,000,000 events, the sufficient-statistics
query (two metrics: a binary conversion and a continuous revenue, 7-day window) takes at most
1.5x a bare per-unit ``GROUP BY`` over the same join, measured in the same run; and the
statistics of one look (all tests for two arms and one metric, from the summaries) take at most
5 ms.

Baselines (tests/benchmarks/common.py), interleaved with abkit's query in every repeat, each
under PostgreSQL's own plan and under abkit's planner settings: per unit grouped by
``(arm_key, unit_id)``; per unit grouped by the unit alone with the arm carried (the fair one:
the plan abkit can use); and the join-only ``GROUP BY arm`` floor (no per-unit values, so no
variance: nothing that tests can be as cheap). The ratio is taken against the **fastest**
per-unit baseline.

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
from common import BARE, METRICS, baseline_summary, grow, scratch_database, time_baselines

from abkit.core.stats import (
    SequentialMonitor,
    fixed_horizon_test,
    sequential_srm_test,
    sequential_test,
    srm_test,
)
from abkit.store.analysis import SqlAnalysis
from abkit.store.engine import create_store_engine


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
            ours: list[float] = []
            baselines: list[dict[str, float]] = []

            def our_query() -> None:
                analysis.summaries("bench", METRICS)
                conn.commit()

            for _ in range(args.repeats):  # interleaved, so drift hits all alike
                ours += timed(our_query, 1)
                baselines.append(time_baselines(conn))
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
            **baseline_summary(ours, baselines),
            "raw_query_s": [round(t, 3) for t in ours],
            "ratio_goal": 1.5,
            "look_stats_median_ms": round(statistics.median(look) * 1000, 3),
            "look_stats_goal_ms": 5.0,
            "n_per_arm": counts,
        }
        print(json.dumps(result))
        print(plan)
        print(
            f"analysis query {result['query_s']} s vs the fastest per-unit baseline "
            f"({result['fastest_per_unit']}): ratio {result['ratio_to_fastest_per_unit']} "
            f"(goal <= 1.5); vs the join-only floor: {result['ratio_to_join_only_floor']}; "
            f"baselines {result['baselines_median_s']}; "
            f"statistics of one look {result['look_stats_median_ms']} ms (goal <= 5)"
        )
        engine.dispose()


if __name__ == "__main__":
    main()
