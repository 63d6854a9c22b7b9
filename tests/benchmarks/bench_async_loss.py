"""Benchmark: what ``ABKIT_EXPOSURE_DURABILITY=async`` can lose -- the measured loss window.

With ``async``, an ``Assign`` answer does not wait for its exposure's fsync. Per round: a fresh
PostgreSQL database, ``abkit grpc`` (direct mode), 8 callers each asking for a new unit per call
for 5 s, then ``kill -9`` of the server -- two loads: ``assign+track`` (Assign, then Track;
events stay durable before the answer, and their group commit takes the exposures appended
before them along) and ``assign`` (Assign only: nothing forces a commit but the journal's
flusher, every 5 ms). The server is restarted on the same journal, which drains into
PostgreSQL. Counted: the acknowledged ``in_experiment`` exposures that are not stored (lost),
and the acknowledged events that are not stored (must be 0). The loss window is lost
exposures over the run's exposure rate, in milliseconds. A ``sync`` round runs interleaved as
the control (it must lose nothing).

A kill -9 loses what the process held in memory; a power cut would also lose what the kernel
had not written, which this cannot measure (the journal's fsync interval, 5 ms, bounds it).

    .venv/bin/python tests/benchmarks/bench_async_loss.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))

from common import scratch_database

from abkit.store.sql import SqlStore
from tests.serving import load_until_killed, missing_rows, serve, start_experiment

SECONDS = 5.0


def one_round(mode: str, track: bool) -> dict[str, float]:
    with scratch_database() as url, tempfile.TemporaryDirectory() as tmp:
        store = SqlStore.from_url(url)
        start_experiment(store)
        journal = Path(tmp) / "journal"
        proc, port = serve(url, journal, {"ABKIT_EXPOSURE_DURABILITY": mode})
        load = load_until_killed(port, seconds=SECONDS, track=track)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        exposed, tracked = load.stop()
        restarted, _ = serve(url, journal, {"ABKIT_WRITER_FLUSH_SECONDS": "0.05"})
        lost_exposures, lost_events = missing_rows(store, exposed, tracked, timeout=30)
        restarted.send_signal(signal.SIGTERM)
        restarted.communicate(timeout=60)
        store.close()
    if lost_events:
        raise SystemExit(f"invalid: {len(lost_events)} acknowledged events lost ({mode})")
    rate = len(exposed) / SECONDS
    return {
        "acknowledged": len(exposed),
        "lost": len(lost_exposures),
        "window_ms": round(1000 * len(lost_exposures) / rate, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {}
    for r in range(args.rounds):
        for track in (True, False):
            for mode in ("async", "sync"):
                name = f"{mode} {'assign+track' if track else 'assign'}"
                runs.setdefault(name, []).append(one_round(mode, track))
                print(f"  round {r + 1} {name}: {runs[name][-1]}", file=sys.stderr, flush=True)
    for name, found in runs.items():
        if name.startswith("sync") and any(run["lost"] for run in found):
            raise SystemExit(f"invalid: sync mode lost acknowledged exposures: {found}")
    summary = {
        "benchmark": "async_exposure_loss_on_kill_9",
        "rounds": args.rounds,
        **{
            name: {
                "lost_exposures": [run["lost"] for run in found],
                "window_ms_median": statistics.median(run["window_ms"] for run in found),
                "window_ms_max": max(run["window_ms"] for run in found),
            }
            for name, found in runs.items()
        },
        "runs": runs,
    }
    print(json.dumps(summary))
    for name in runs:
        s = summary[name]
        print(f"{name}: lost {s['lost_exposures']} acknowledged exposures per kill -9; window "
              f"median {s['window_ms_median']} ms, max {s['window_ms_max']} ms")  # fmt: skip


if __name__ == "__main__":
    main()
