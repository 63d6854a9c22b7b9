"""Benchmark: the analysis of one experiment at 1M and 10M exposed units (events 5x), and the
worker's peak memory during a 10M-unit look.

One PostgreSQL database is filled to 1,000,000 exposed units and 5,000,000 events, the analysis
query and two baselines are timed (interleaved, ``--repeats`` times), then the same database is
grown to 10,000,000 units and 50,000,000 events and timed again. The goal (issue #8): abkit's
query within 1.5x of a bare per-unit GROUP BY over the same rows at both sizes, and time growing
no worse than linearly (10x the rows, at most ~10x the time). Finally one real worker look --
``abkit.services.decisions.DecisionService.look`` in a fresh process -- runs against the 10M-unit
experiment and its peak resident memory (VmHWM) is read from /proc.

    .venv/bin/python tests/benchmarks/bench_scale.py [--small 1000000] [--large 10000000]

Loading 60M rows takes a while (about half an hour on the 2-core CI machine); the data is made
inside PostgreSQL (generate_series) and dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import sqlalchemy as sa
from common import (
    METRICS,
    add_bench_experiment,
    baseline_summary,
    grow,
    scratch_database,
    time_baselines,
)

from abkit.store.analysis import SqlAnalysis
from abkit.store.engine import create_store_engine

POLICY = {
    "primary": {"metric": "conversion", "kind": "binary", "window": 604800},
    "guardrails": [
        {
            "metric": "revenue",
            "kind": "continuous",
            "direction": "increase",
            "margin": 0.05,
            "relative": True,
        }
    ],
    "min_units_per_arm": 100,
}
LOOK = r"""
import json, sys, time
from abkit.infra.clock import SystemClock
from abkit.services.decisions import DecisionService
from abkit.store.sql import SqlStore
store = SqlStore.from_url(sys.argv[1])
started = time.perf_counter()
outcome = DecisionService(store, SystemClock()).look("bench")
elapsed = time.perf_counter() - started
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
action = outcome.record.action if outcome else None
print(json.dumps({"seconds": elapsed, "peak_rss_mb": peak / 1024, "action": action}))
"""


def timed(engine: sa.Engine, repeats: int) -> dict[str, object]:
    ours: list[float] = []
    baselines: list[dict[str, float]] = []
    with engine.connect() as conn:
        analysis = SqlAnalysis(conn)
        plan = analysis.plan("bench", METRICS)
        conn.commit()
        for _ in range(repeats):  # interleaved, so drift hits all alike
            started = time.perf_counter()
            analysis.summaries("bench", METRICS)
            conn.commit()
            ours.append(time.perf_counter() - started)
            baselines.append(time_baselines(conn))
    summary = baseline_summary(ours, baselines)
    return {
        **summary,
        "ratio": summary["ratio_to_fastest_per_unit"],
        "raw_query_s": ours,
        "raw_baselines_s": baselines,
        "plan": plan,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=1_000_000)
    parser.add_argument("--large", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with scratch_database() as url:
        engine = create_store_engine(url)
        result: dict[str, object] = {"benchmark": "analysis_scale_postgresql"}
        started = time.perf_counter()
        grow(engine, 0, args.small)
        result["load_small_s"] = round(time.perf_counter() - started)
        small = timed(engine, args.repeats)
        started = time.perf_counter()
        grow(engine, args.small, args.large)
        result["load_large_s"] = round(time.perf_counter() - started)
        large = timed(engine, args.repeats)
        result.update(
            {
                "small_units": args.small,
                "large_units": args.large,
                "small": small,
                "large": large,
                "growth_query": large["query_s"] / small["query_s"],  # type: ignore[operator]
                "growth_fastest_per_unit": (
                    large["query_s"] / large["ratio"] / (small["query_s"] / small["ratio"])  # type: ignore[operator]
                ),
                "growth_join_only": (
                    large["baselines_median_s"]["join_only"]  # type: ignore[index]
                    / small["baselines_median_s"]["join_only"]  # type: ignore[index]
                ),
                "growth_rows": args.large / args.small,
            }
        )
        # A real look of the worker on the large experiment, in a fresh process.
        add_bench_experiment(engine, POLICY)
        engine.dispose()
        look = subprocess.run(
            [sys.executable, "-c", LOOK, url], capture_output=True, text=True, check=True
        )
        result["worker_look"] = json.loads(look.stdout.strip().splitlines()[-1])
        print(json.dumps(result))
        print(f"plan at {args.large:,} units:\n{large['plan']}")
        print(
            f"{args.small:,} units: query {small['query_s']:.1f} s, ratio {small['ratio']:.2f}; "
            f"{args.large:,} units: query {large['query_s']:.1f} s, ratio {large['ratio']:.2f} "
            "(goal <= 1.5); "
            f"growth {result['growth_query']:.1f}x for {result['growth_rows']:.0f}x the rows "
            f"(fastest per-unit baseline {result['growth_fastest_per_unit']:.1f}x, join-only "
            f"{result['growth_join_only']:.1f}x) "
            f"(goal: at most {result['growth_rows']:.0f}x, linear); "
            f"worker look at {args.large:,}: {result['worker_look']['seconds']:.1f} s, "
            f"peak RSS {result['worker_look']['peak_rss_mb']:.0f} MB"
        )


if __name__ == "__main__":
    main()
