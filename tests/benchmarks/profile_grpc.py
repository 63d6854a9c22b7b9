"""Profile: where a gRPC server's CPU goes under the same load as bench_grpc.py.

Starts one server of a ``bench_grpc`` kind (``baseline``, ``baseline-aio``, ``new``, ``new-async``,
``returning``)
on a fresh database, runs the Go generator against it, and profiles the server process during
the run with

* ``py-spy`` (``--gil``: only the thread holding the GIL, ``--nonblocking``; ``.bench-venv``
  has it): the share of samples per part of the request path -- grpcio's Python layer, abkit's
  request path, the wait for the group commit, the journal and drain threads;
* ``perf`` (Debian's ``linux-perf``): the share of the process's CPU per shared object and per
  symbol, kernel included (context switches show up there);
* ``threads`` (no profiler, nothing slowed down): each thread's CPU per call (user and system)
  and its voluntary and involuntary context switches per call, from ``/proc`` before and after
  the run -- steadier than calls/s on a shared machine, and it shows which thread pays (the
  request loop, the journal's committer, the drain, grpc's pollers); with ``--processes 2``,
  the threads of both server processes.

    .venv/bin/python tests/benchmarks/profile_grpc.py --kind new --tool py-spy
    .venv/bin/python tests/benchmarks/profile_grpc.py --kind baseline --tool perf
    .venv/bin/python tests/benchmarks/profile_grpc.py --kind new --tool threads \
        --env ABKIT_COMMIT_DELAY_SECONDS=0.002
    .venv/bin/python tests/benchmarks/profile_grpc.py --kind baseline --tool threads --processes 2
    .venv/bin/python tests/benchmarks/profile_grpc.py --kind new --tool none \
        --env ABKIT_WRITER_FLUSH_SECONDS=120 --env ABKIT_WRITER_BATCH_SIZE=10000000

``--tool none`` only measures (no profiler attached); ``--env`` sets a server setting, for
experiments like the ones BENCHMARKS.md reports (drain held off, pool size).

A measurement aid, not a benchmark: the figures in BENCHMARKS.md come from bench_grpc.py.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_grpc as bg
from common import scratch_database

PY_SPY = bg.ROOT / ".bench-venv" / "bin" / "py-spy"
PARTS = (
    ("wait for the group commit", "DurableWaits"),
    ("journal thread", "Journal._run"),
    ("drain thread", "JournalDrain"),
    ("abkit request path", "abkit/rpc/tracing.py"),
)


def py_spy_parts(raw: Path) -> dict[str, float]:
    """Share of GIL-held samples per part, from py-spy's raw (collapsed) output."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        part = next((name for name, marker in PARTS if marker in stack), None)
        if part is None:
            leaf = stack.rsplit(";", 1)[-1]
            part = "grpcio: threading.Condition" if "threading.py" in leaf else "grpcio, other"
        counts[part] += int(n)
    total = sum(counts.values()) or 1
    return {k: round(100 * v / total, 1) for k, v in counts.most_common()}


def perf_report(data: Path, sort: str, top: int) -> list[str]:
    out = subprocess.run(
        ["perf", "report", "-i", str(data), "--stdio", "--sort", sort],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [ln.strip() for ln in out.splitlines() if ln.strip() and not ln.startswith("#")][:top]


def thread_counters(pids: list[int]) -> dict[int, tuple[str, int, int, int, int]]:
    """Per thread of ``pids``: (name, user ticks, system ticks, voluntary, involuntary
    switches)."""
    found = {}
    for task in (t for pid in pids for t in Path(f"/proc/{pid}/task").iterdir()):
        try:
            status = (task / "status").read_text()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            name = (task / "comm").read_text().strip()
        except FileNotFoundError:  # the thread ended
            continue
        counts = dict(line.split(":\t") for line in status.splitlines() if "ctxt_switches" in line)
        found[int(task.name)] = (
            name,
            int(fields[11]),
            int(fields[12]),
            int(counts["voluntary_ctxt_switches"]),
            int(counts["nonvoluntary_ctxt_switches"]),
        )
    return found


def thread_report(
    before: dict[int, tuple[str, int, int, int, int]],
    after: dict[int, tuple[str, int, int, int, int]],
    calls: float,
) -> list[str]:
    """The threads that used CPU during the run, per call, busiest first; then the processes.

    A thread started during the run counts from zero (grpcio's synchronous server starts its
    pool threads as calls arrive); one that ended during the run is not counted."""
    us = 1e6 / os.sysconf("SC_CLK_TCK") / calls
    rows, total = [], [0, 0, 0, 0]
    for tid, (name, *now) in after.items():
        was = before[tid][1:] if tid in before else (0, 0, 0, 0)
        delta = [a - b for a, b in zip(now, was, strict=True)]
        total = [t + d for t, d in zip(total, delta, strict=True)]
        if delta[0] + delta[1]:
            rows.append((delta[0] + delta[1], tid, name, delta))
    lines = [f"{'thread':>24}  CPU us/call (user + sys)  switches/call: voluntary, involuntary"]
    for _, tid, name, (user, system, vol, invol) in sorted(rows, reverse=True):
        cpu = f"{(user + system) * us:7.1f} ({user * us:6.1f} + {system * us:6.1f})"
        lines.append(f"{name:>16} {tid:>7}  {cpu}  {vol / calls:5.2f}, {invol / calls:5.2f}")
    user, system, vol, invol = total
    lines.append(
        f"{'processes':>24}  {(user + system) * us:7.1f} ({user * us:6.1f} + {system * us:6.1f})"
        f"  {vol / calls:5.2f}, {invol / calls:5.2f}"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--kind",
        default="new",
        choices=["baseline", "baseline-aio", "new", "new-async", "returning"],
    )
    parser.add_argument("--method", default="Assign", choices=["Assign", "AssignBatch"])
    parser.add_argument("--tool", default="py-spy", choices=["py-spy", "perf", "threads", "none"])
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument(
        "--processes", type=int, default=1,
        help="server processes (threads and none only: the profilers follow one process)",
    )  # fmt: skip
    parser.add_argument("--keep", type=Path, help="copy the raw profile here (py-spy: collapsed)")
    args = parser.parse_args()
    if args.processes > 1 and args.tool not in ("threads", "none"):
        parser.error(f"--tool {args.tool} follows one process: use --processes 1")
    settings = {}
    for setting in args.env:
        name, sep, value = setting.partition("=")
        if not sep or not name.startswith("ABKIT_"):
            parser.error(f"--env {setting!r}: expected ABKIT_NAME=VALUE")
        settings[name] = value
    with scratch_database() as url, tempfile.TemporaryDirectory(prefix="abkit-prof-") as tmp:
        work = Path(tmp)
        (work / "exp.yaml").write_text(bg.EXPERIMENT)
        env = {**os.environ, "ABKIT_DATABASE_URL": url, **settings}
        subprocess.run(
            [sys.executable, "-m", "abkit", "experiment", "apply", "-f", str(work / "exp.yaml"),
             "--start"], env=env, check=True, capture_output=True,
        )  # fmt: skip
        out = work / "profile"
        with bg.server(args.kind, args.processes, env, work) as (port, pids):
            extra: tuple[str, ...] = ()
            if args.kind == "returning":
                extra = ("-units", "returning", "-pool", str(bg.POOL))
                bg.loadgen(port, "Assign", 60, "warm", *extra, "-n", str(bg.POOL), "-c", "1",
                           "-m", "1")  # fmt: skip
            seconds = f"{args.seconds:g}"
            if args.tool == "py-spy":
                cmd = [str(PY_SPY), "record", "--pid", str(pids[0]), "--duration", seconds,
                       "--rate", "200", "--gil", "--nonblocking", "--format", "raw",
                       "-o", str(out)]  # fmt: skip
            elif args.tool == "perf":
                cmd = ["perf", "record", "-F", "499", "-p", str(pids[0]), "-o", str(out),
                       "--", "sleep", seconds]  # fmt: skip
            else:
                cmd = []
            profiler = (
                subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                if cmd
                else None
            )
            threads_before = thread_counters(pids)
            report = bg.loadgen(
                port, args.method, args.seconds + 2, f"prof{time.time_ns()}", *extra
            )
            threads_after = thread_counters(pids)
            if profiler is not None:
                profiler.wait()
            if args.keep is not None and profiler is not None:
                shutil.copyfile(out, args.keep)
        under = "" if profiler is None else " under the profiler"
        print(f"{args.kind} {args.method}: {report['units_per_second']:,.0f} units/s{under}")
        if args.tool == "py-spy":
            for part, share in py_spy_parts(out).items():
                print(f"{share:5.1f} %  {part}")
        elif args.tool == "threads":
            calls = float(report["requests"])  # type: ignore[arg-type]
            print("\n".join(thread_report(threads_before, threads_after, calls)))
        elif args.tool == "perf":
            print("\n".join(perf_report(out, "dso", 6)))
            print("\n".join(perf_report(out, "sym", 12)))


if __name__ == "__main__":
    main()
