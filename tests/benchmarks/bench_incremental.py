"""Benchmark: incremental looks (issue #16) at 1 M and 10 M exposed units (events 5x).

What it measures, on one PostgreSQL database filled inside PostgreSQL (``common.grow``):

* at 1 M units: the first look (no state yet), then looks with **nothing new** (goal <= 50 ms):
  the ingestion barrier, reading the state, the totals;
* at 10 M units / 50 M events, interleaved ``--repeats`` times: **today's full look** (the full
  recomputation, ``SqlAnalysis.summaries``) against the **first look** of the maintained path
  (state dropped before each run; goal: no slower);
* for each share of new events (0.1 %, 1 %, 10 % of the events, for units already exposed, at
  random), interleaved ``--repeats`` times: the **look after them** (``StatisticsService.refresh``
  from the state before them: the state is put back between runs) against a **bare join** of
  those new events with their units' exposures -- the least work that attributes them (goal: the
  look <= 2x the join at 1 %, and >= 10x faster than the full look);
* the maintained totals against the full recomputation at the same watermark (must be equal);
* a real worker look (``DecisionService.look``) in a fresh process after another 1 %: seconds
  and peak resident memory (VmHWM).

    .venv/bin/python tests/benchmarks/bench_incremental.py [--small 1000000] [--large 10000000]

Progress goes to stderr with timestamps; the result is one JSON line on stdout, then a summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from common import ANALYSIS_WORK_MEM, METRICS, add_bench_experiment, grow, scratch_database

from abkit.services.statistics import StatisticsService
from abkit.store.analysis import SqlAnalysis
from abkit.store.sql import SqlStore

KEY = "bench"
POLICY = {
    "primary": {"metric": "conversion", "kind": "binary", "window": 604800},
    "guardrails": [
        {
            "metric": "revenue",
            "kind": "continuous",
            "window": 604800,
            "direction": "increase",
            "margin": 0.05,
            "relative": True,
        }
    ],
    "min_units_per_arm": 100,
}
BARE_JOIN = """
SELECT x.arm_key, COUNT(*), SUM(v.value)
FROM events AS v
JOIN exposures AS x ON x.experiment_key = 'bench' AND x.unit_id = v.unit_id
WHERE v.seq > :w AND v.seq <= :h AND v.metric IN ('conversion', 'revenue')
    AND v.occurred_at >= x.exposed_at
GROUP BY x.arm_key
"""
LOOK = r"""
import json, sys, time
from abkit.infra.clock import SystemClock
from abkit.services.decisions import DecisionService
from abkit.store.sql import SqlStore
store = SqlStore.from_url(sys.argv[1])
started = time.perf_counter()
outcome = DecisionService(store, SystemClock(), reconcile_every=0).look("bench")
elapsed = time.perf_counter() - started
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
action = outcome.record.action if outcome else None
error = outcome.analysis.error if outcome and outcome.analysis else None
print(json.dumps({"seconds": elapsed, "peak_rss_mb": peak / 1024, "action": action,
                  "error": error}))
"""


class Clock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def say(message: str) -> None:
    print(f"{datetime.now(UTC):%H:%M:%S} {message}", file=sys.stderr, flush=True)


def state_rows(engine: sa.Engine) -> dict[str, list[dict[str, Any]]]:
    with engine.connect() as conn:
        return {
            table: [dict(r) for r in conn.execute(sa.text(f"SELECT * FROM {table}")).mappings()]
            for table in ("analysis_watermarks", "analysis_days")
        }


def put_back(engine: sa.Engine, saved: dict[str, list[dict[str, Any]]]) -> None:
    """Restore the maintained state saved by :func:`state_rows` (empty: no state)."""
    meta = sa.MetaData()
    with engine.begin() as conn:
        for table in ("analysis_days", "analysis_watermarks"):
            conn.execute(sa.text(f"DELETE FROM {table}"))
        for table in ("analysis_watermarks", "analysis_days"):
            if saved[table]:
                conn.execute(sa.Table(table, meta, autoload_with=conn).insert(), saved[table])


def max_event_seq(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT COALESCE(MAX(seq), 0) FROM events")).scalar_one())


def add_events(engine: sa.Engine, count: int, units: int, tag: str) -> None:
    """``count`` new revenue/conversion events for random units already exposed, after their
    exposure and inside the window (so every one changes a unit's value)."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                """
                INSERT INTO events (event_id, unit_id, metric, value, occurred_at, trace_id,
                                    span_id)
                SELECT :tag || i, 'user-' || (1 + (i * 7919 + :salt) % :units),
                       CASE WHEN i % 5 = 0 THEN 'conversion' ELSE 'revenue' END,
                       ((i * 13) % 100) / 10.0,
                       timestamptz '2026-03-02' + (i % 86400) * interval '1 second', '', ''
                FROM generate_series(1, CAST(:count AS bigint)) AS i
                """
            ),
            {"tag": f"{tag}-", "count": count, "units": units, "salt": len(tag) * 104729},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE events"))


def timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def bare_join(engine: sa.Engine, low: int, high: int) -> float:
    """The faster of PostgreSQL's own plan and abkit's planner settings, as the other
    baselines (common.run_bare)."""
    best = float("inf")
    for streamed in (False, True):
        with engine.connect() as conn:
            conn.execute(sa.text(f"SET LOCAL work_mem = '{ANALYSIS_WORK_MEM}'"))
            if streamed:
                conn.execute(sa.text("SET LOCAL enable_hashjoin = off"))
            started = time.perf_counter()
            conn.execute(sa.text(BARE_JOIN), {"w": low, "h": high}).all()
            best = min(best, time.perf_counter() - started)
            conn.commit()
    return best


def full_look(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        SqlAnalysis(conn).summaries(KEY, METRICS)
        conn.commit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=1_000_000)
    parser.add_argument("--large", type=int, default=10_000_000)
    parser.add_argument("--shares", default="0.001,0.01,0.1")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shares = [float(s) for s in args.shares.split(",")]
    result: dict[str, Any] = {"benchmark": "incremental_looks_postgresql"}
    with scratch_database() as url:
        store = SqlStore.from_url(url)
        engine = store.engine
        stats = StatisticsService(store, Clock())
        say(f"loading {args.small:,} units")
        grow(engine, 0, args.small)
        first_small = timed(lambda: stats.refresh(KEY, METRICS))
        idle = [timed(lambda: stats.refresh(KEY, METRICS)) for _ in range(15)]
        assert stats.refresh(KEY, METRICS).advanced == ()
        result["small"] = {
            "units": args.small,
            "first_look_s": round(first_small, 3),
            "nothing_new_ms": round(statistics.median(idle) * 1000, 2),
            "nothing_new_ms_runs": [round(t * 1000, 2) for t in idle],
        }
        say(f"1M: {result['small']}; loading {args.large:,} units")
        started = time.perf_counter()
        grow(engine, args.small, args.large)
        result["load_large_s"] = round(time.perf_counter() - started)
        say("full look against first look")
        empty = {"analysis_watermarks": [], "analysis_days": []}
        full, first = [], []
        for _ in range(args.repeats):
            full.append(timed(lambda: full_look(engine)))
            put_back(engine, empty)
            first.append(timed(lambda: stats.refresh(KEY, METRICS)))
            say(f"full {full[-1]:.1f} s, first {first[-1]:.1f} s")
        full_s = statistics.median(full)
        result["full_look_s"] = round(full_s, 2)
        result["first_look_s"] = round(statistics.median(first), 2)
        result["first_over_full"] = round(statistics.median(first) / full_s, 3)
        result["raw"] = {"full_look_s": full, "first_look_s": first}
        total_events = args.large * 5
        result["shares"] = []
        for k, share in enumerate(shares):
            saved = state_rows(engine)
            low = max_event_seq(engine)
            count = int(total_events * share)
            add_events(engine, count, args.large, f"n{k}")
            high = max_event_seq(engine)
            joins, looks = [], []
            for _ in range(args.repeats):
                joins.append(bare_join(engine, low, high))
                put_back(engine, saved)
                looks.append(timed(lambda: stats.refresh(KEY, METRICS)))
                say(f"{share:.1%}: join {joins[-1]:.2f} s, look {looks[-1]:.2f} s")
            look_s, join_s = statistics.median(looks), statistics.median(joins)
            result["shares"].append(
                {
                    "share": share,
                    "new_events": count,
                    "look_s": round(look_s, 3),
                    "bare_join_s": round(join_s, 3),
                    "look_over_join": round(look_s / join_s, 3),
                    "full_over_look": round(full_s / look_s, 1),
                    "raw_look_s": looks,
                    "raw_join_s": joins,
                }
            )
        say("checking the maintained state against the full recomputation")
        check = stats.reconcile(KEY, METRICS)
        result["differences"] = list(check.differences)
        if check.differences:
            raise SystemExit(f"the maintained state differs: {check.differences[:5]}")
        say("a worker look in a fresh process after another 1 %")
        add_bench_experiment(engine, POLICY)
        add_events(engine, int(total_events * 0.01), args.large, "w")
        store.close()
        look = subprocess.run(
            [sys.executable, "-c", LOOK, url], capture_output=True, text=True, check=True
        )
        result["worker_look"] = json.loads(look.stdout.strip().splitlines()[-1])
        if result["worker_look"]["error"]:
            raise SystemExit(f"the worker look failed: {result['worker_look']['error']}")
    print(json.dumps(result))
    lines = [
        f"{args.small:,} units: first look {result['small']['first_look_s']:.1f} s, look with "
        f"nothing new {result['small']['nothing_new_ms']:.1f} ms (goal <= 50 ms)",
        f"{args.large:,} units: full look {result['full_look_s']:.1f} s, first maintained look "
        f"{result['first_look_s']:.1f} s ({result['first_over_full']:.2f}x; goal <= 1x)",
    ]
    for s in result["shares"]:
        lines.append(
            f"  {s['share']:.1%} new ({s['new_events']:,} events): look {s['look_s']:.2f} s, "
            f"bare join {s['bare_join_s']:.2f} s ({s['look_over_join']:.2f}x; goal <= 2x at 1%), "
            f"{s['full_over_look']:.0f}x faster than the full look (goal >= 10x)"
        )
    w = result["worker_look"]
    lines.append(
        f"worker look after 1 % more: {w['seconds']:.2f} s, peak RSS {w['peak_rss_mb']:.0f} MB"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
