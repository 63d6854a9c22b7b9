"""Benchmark: gRPC Assign and AssignBatch of abkit against an empty-handler server, every call a
new unit whose exposure is written -- and verified -- in PostgreSQL.

**Generator.** ``tests/benchmarks/loadgen`` (Go; ``make bench-tools`` builds it): it builds every
request's body on the fly, so each call asks for units never seen before (``-units new``, a unit
id prefix unique to the run), or cycles a warmed pool (``-units returning``). h2load, which sends
one fixed body, can only measure returning units. A call counts only with ``grpc-status: 0`` and
a well-formed reply; a run with any error is invalid and the benchmark stops.

**Runs.** Per round, interleaved, for ``Assign`` and ``AssignBatch`` (100 units a call) and for 1
and 2 server processes (``abkit grpc --processes``; the baseline's processes share a port the
same way), each on a **fresh database and fresh server processes**:

* ``baseline`` -- ``python -m abkit.tools.loadtest``: same service and messages on grpcio's
  synchronous server, the handlers return an empty answer;
* ``baseline-aio`` -- the same empty handlers as coroutines on a ``grpc.aio`` server, as abkit's
  own server is; each ratio is also given against the faster of the two in the same round;
* ``new`` -- abkit, new units, exposures durable before the answer (the default,
  ``ABKIT_EXPOSURE_DURABILITY=sync``: the local journal's group commit);
* ``new-async`` -- the same with ``ABKIT_EXPOSURE_DURABILITY=async``;
* ``new-stream`` -- stream mode: the same server publishing to a JetStream stream of its own on
  the local NATS server (acknowledged by the stream before the answer), with one ``abkit
  loader`` process copying the stream into PostgreSQL during the run;
* ``returning`` -- abkit, a pool of 1,000 units asked once before the measurement: nothing new to
  write.

**Latency at half load.** For the three ``new`` kinds, the same fresh server then takes a second,
rate-limited run at half the calls per second its maximum run stored (open loop: a call is
timed from when it was due, so queueing counts), and its p99 is reported.

**Stored, not only answered.** For the ``new`` kinds the rate is the units answered divided by
the run's seconds *plus* the time the drain (or the loader) then takes until the last of them is
in PostgreSQL: a server that answers faster than it stores would otherwise report a rate it
cannot sustain (its journal only grows, up to ``ABKIT_SPOOL_MAX_MB``). The answer rate and the
catch-up are reported beside it.

After each abkit run the server is stopped (SIGTERM: it drains its journal) and the
``exposures`` table must hold exactly the units the runs asked for (coverage 1, no targeting:
every answer is ``in_experiment``; in stream mode, once the loader has caught up); otherwise
the run is invalid. CPU seconds of the servers,
the PostgreSQL backends and the generator during the measured window are reported: on this
2-core machine all three share the cores.

    .venv/bin/python tests/benchmarks/bench_grpc.py [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from common import scratch_database

from abkit.rpc.processes import reserve_port
from abkit.store.engine import create_store_engine

ROOT = Path(__file__).parents[2]
LOADGEN = Path(os.environ.get("ABKIT_LOADGEN", ROOT / ".bench-venv" / "loadgen"))
EXPERIMENT = """
key: bench
arms:
  - {key: control, model_version: v1, weight: 0.5, control: true}
  - {key: treatment, model_version: v2, weight: 0.5}
"""
KINDS = ("baseline", "baseline-aio", "new", "new-async", "new-stream", "returning")
BASELINES = ("baseline", "baseline-aio")
NEW = ("new", "new-async", "new-stream")
NATS_URL = os.environ.get("ABKIT_TEST_NATS_URL", "nats://127.0.0.1:4222")
POOL = 1000


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            listed = task / "children"
            todo += [int(c) for c in listed.read_text().split()] if listed.exists() else []
    return found


def postgres_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-x", "postgres"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


CONNECTIONS = 16
"""The generator's connections (``--connections``), 64 calls in flight over them whatever the
number. Two server processes share a port by ``SO_REUSEPORT``, which hands each connection to
one of them by a hash: with the 4 connections used before 2026-12-04, a round split them 2:2,
3:1 or even 4:0 (one process idle) at random -- a lottery for each server, not a property of
it. With 16 the split stays near even (the per-process CPU in the report shows it)."""


def loadgen(port: int, method: str, seconds: float, prefix: str, *extra: str) -> dict[str, object]:
    """One run of the generator: its JSON report, with its CPU seconds added."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    streams = str(64 // CONNECTIONS)
    out = subprocess.run(
        [str(LOADGEN), "-addr", f"127.0.0.1:{port}", "-method", method, "-d", f"{seconds}s",
         "-prefix", prefix, "-experiment", "bench", "-c", str(CONNECTIONS), "-m", streams,
         *extra],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    report: dict[str, object] = json.loads(out)
    report["loadgen_cpu_s"] = (after.ru_utime + after.ru_stime) - (
        before.ru_utime + before.ru_stime
    )
    if report["errors"]:
        raise SystemExit(f"invalid run, errors: {report}")
    return report


def _start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r"port (\d+)", line)
    if found is None:
        raise SystemExit(f"{args} did not start: {line!r}")
    return proc, int(found.group(1))


@contextmanager
def server(
    kind: str, processes: int, env: dict[str, str], work: Path
) -> Iterator[tuple[int, list[int]]]:
    """A fresh server of ``kind``: yields (port, pids of its processes); stops it gracefully."""
    procs: list[subprocess.Popen[str]] = []
    reserved = None
    if kind in BASELINES:
        reserved = reserve_port("127.0.0.1", 0)
        port = reserved.getsockname()[1]
        for _ in range(processes):
            args = [sys.executable, "-m", "abkit.tools.loadtest", f"127.0.0.1:{port}"]
            args += ["--aio"] if kind == "baseline-aio" else []
            procs.append(_start(args, env)[0])
    else:
        journal = tempfile.mkdtemp(prefix="journal-", dir=work)
        mode = "async" if kind == "new-async" else "sync"
        args = [sys.executable, "-m", "abkit", "grpc", "--address", "127.0.0.1:0",
                "--processes", str(processes)]  # fmt: skip
        proc, port = _start(
            args, {**env, "ABKIT_SPOOL_DIR": journal, "ABKIT_EXPOSURE_DURABILITY": mode}
        )
        procs.append(proc)
        if kind == "new-stream":
            loader = subprocess.Popen(
                [sys.executable, "-m", "abkit", "loader"], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT,
            )  # fmt: skip
            procs.append(loader)
    time.sleep(1.0)
    try:
        yield port, [d for p in procs for d in descendants(p.pid)]
    finally:
        if kind == "new-stream":
            wait_loaded(env["ABKIT_DATABASE_URL"], procs)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.communicate(timeout=120)
            if kind not in BASELINES and p.returncode != 0:
                raise SystemExit(f"invalid run: the abkit server exited {p.returncode}")
        if reserved is not None:
            reserved.close()


def wait_loaded(url: str, procs: list[subprocess.Popen[str]], timeout: float = 300) -> None:
    """Stream mode: stop the server first (it has published everything it acknowledged), then
    wait until the loader has nothing left to load (the row count stops moving)."""
    procs[0].send_signal(signal.SIGTERM)
    procs[0].communicate(timeout=120)
    engine = create_store_engine(url)
    last, still, deadline = -1, 0, time.monotonic() + timeout
    while still < 4 and time.monotonic() < deadline:
        with engine.connect() as conn:
            count = conn.execute(sa.text("SELECT count(*) FROM exposures")).scalar_one()
        still = still + 1 if count == last else 0
        last = count
        time.sleep(0.5)
    engine.dispose()


def catch_up(url: str, prefix: str, asked: int, timeout: float = 300) -> float:
    """Seconds until the store holds every unit the generator was answered for (``prefix``):
    what an answer rate leaves to the drain (or the loader) is part of the work.

    It polls the exposure sequence (one row; the database is this run's own, so numbers drawn
    are rows written or being written) and counts the rows only once enough numbers were drawn:
    counting them on every poll scans the table -- 0.2 s of PostgreSQL at 2 M rows, every
    0.1 s -- and slows the very ingest it waits for. The count decides."""
    started, deadline = time.monotonic(), time.monotonic() + timeout
    engine = create_store_engine(url)
    drawn_sql = sa.text(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM abkit_exposure_seq"
    )
    stored = 0
    try:
        while True:
            with engine.connect() as conn:
                if conn.execute(drawn_sql).scalar_one() >= asked:
                    stored = conn.execute(
                        sa.text("SELECT count(*) FROM exposures WHERE unit_id LIKE :p"),
                        {"p": f"{prefix}%"},
                    ).scalar_one()
            if stored >= asked:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise SystemExit(f"invalid run: {stored} of {asked} units stored after {timeout} s")
            time.sleep(0.05)
    finally:
        engine.dispose()


def stream_env(tag: str) -> dict[str, str]:
    safe = re.sub(r"[^A-Za-z0-9]", "", tag)[-40:]
    return {
        "ABKIT_STREAM_URL": NATS_URL,
        "ABKIT_STREAM_NAME": f"BENCH_{safe}",
        "ABKIT_STREAM_SUBJECT_PREFIX": f"bench-{safe}",
        "ABKIT_LOADER_DURABLE": f"loader-{safe}",
    }


def delete_stream(name: str) -> None:
    import asyncio

    import nats

    async def delete() -> None:
        nc = await nats.connect(NATS_URL)
        try:
            await nc.jetstream().delete_stream(name)
        finally:
            await nc.close()

    asyncio.run(delete())


@dataclass
class Run:
    method: str
    processes: int
    kind: str
    units_per_s: list[float] = field(default_factory=list)
    answered_per_s: list[float] = field(default_factory=list)
    catch_up_s: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    p99_half_ms: list[float] = field(default_factory=list)
    cpu: list[dict[str, object]] = field(default_factory=list)


def one_run(run: Run, round_no: int, seconds: float) -> None:
    with scratch_database() as url, tempfile.TemporaryDirectory(prefix="abkit-bench-") as tmp:
        work = Path(tmp)
        (work / "exp.yaml").write_text(EXPERIMENT)
        env = {**os.environ, "ABKIT_DATABASE_URL": url}
        tag = f"{round_no}{run.method}{run.processes}{time.time_ns()}"
        if run.kind == "new-stream":
            env.update(stream_env(tag))
        subprocess.run(
            [sys.executable, "-m", "abkit", "experiment", "apply", "-f", str(work / "exp.yaml"),
             "--start"], env=env, check=True, capture_output=True,
        )  # fmt: skip
        prefix = f"r{round_no}-{run.method}-{run.processes}-{run.kind}-{time.time_ns()}"
        extra: tuple[str, ...] = ()
        with server(run.kind, run.processes, env, work) as (port, pids):
            if run.kind == "returning":
                extra = ("-units", "returning", "-pool", str(POOL))
                warm = loadgen(port, "Assign", 60, prefix, "-units", "returning", "-pool",
                               str(POOL), "-n", str(POOL), "-c", "1", "-m", "1")  # fmt: skip
                assert warm["ok"] == POOL, warm
            pg = postgres_pids()
            started, pg_before = [cpu_seconds([p]) for p in pids], cpu_seconds(pg)
            report = loadgen(port, run.method, seconds, prefix, *extra)
            ended, pg_after = [cpu_seconds([p]) for p in pids], cpu_seconds(postgres_pids())
            # CPU per server process: SO_REUSEPORT spreads the generator's connections over
            # the processes by a hash, so with few connections the split can be 3:1 or 4:0.
            used = [e - b for e, b in zip(ended, started, strict=True)]
            per_process = sorted((round(u, 1) for u in used), reverse=True)
            asked = int(report["units_asked"])  # type: ignore[call-overload]
            answered = float(report["units_per_second"])  # type: ignore[arg-type]
            rate = answered
            if run.kind in NEW:
                # The rate counts the units *stored*: the run's seconds plus the time the
                # drain (or loader) then needs to bring the last answered unit into PostgreSQL.
                late = catch_up(url, f"{prefix}-", asked)
                rate = asked / (float(report["seconds"]) + late)  # type: ignore[arg-type]
                run.catch_up_s.append(round(late, 2))
                half = float(report["rps"]) * (rate / answered) / 2  # type: ignore[arg-type]
                slow = loadgen(port, run.method, seconds, f"{prefix}h", "-rate", f"{half:.1f}")
                run.p99_half_ms.append(float(slow["p99_ms"]))  # type: ignore[arg-type]
                asked += int(slow["units_asked"])  # type: ignore[call-overload]
                catch_up(url, prefix, asked)
        if run.kind == "new-stream":
            delete_stream(env["ABKIT_STREAM_NAME"])
        if run.kind in NEW:
            engine = create_store_engine(url)
            with engine.connect() as conn:
                stored = conn.execute(
                    sa.text("SELECT count(*) FROM exposures WHERE unit_id LIKE :p"),
                    {"p": f"{prefix}%"},  # both runs: <prefix>-n and <prefix>h-n
                ).scalar_one()
            engine.dispose()
            if stored != asked:
                raise SystemExit(f"invalid run: {asked} units acknowledged, {stored} stored")
    run.units_per_s.append(rate)
    run.answered_per_s.append(answered)
    run.p99_ms.append(float(report["p99_ms"]))  # type: ignore[arg-type]
    run.cpu.append(
        {
            "server_s": round(sum(used), 2),
            "postgres_s": round(pg_after - pg_before, 2),
            "loadgen_s": round(float(report["loadgen_cpu_s"] or 0.0), 2),  # type: ignore[arg-type]
            **({"per_process_s": [c for c in per_process if c > 0.1]} if run.processes > 1 else {}),
        }
    )
    half = f" (at half load {run.p99_half_ms[-1]:.1f} ms)" if run.kind in NEW else ""
    if run.kind in NEW:
        half += f"  answered {run.answered_per_s[-1]:,.0f}/s, stored {run.catch_up_s[-1]} s later"
    print(f"  round {round_no} {run.method:11s} x{run.processes} {run.kind:10s} "
          f"{run.units_per_s[-1]:>10,.0f} units/s  p99 {run.p99_ms[-1]:.1f} ms{half}  "
          f"cpu {run.cpu[-1]}", file=sys.stderr, flush=True)  # fmt: skip


def main() -> None:
    global CONNECTIONS
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--methods", nargs="*", default=["Assign", "AssignBatch"])
    parser.add_argument("--kinds", nargs="*", default=list(KINDS))
    parser.add_argument(
        "--connections", type=int, default=CONNECTIONS, choices=[1, 2, 4, 8, 16],
        help="the generator's connections, 64 calls in flight over them",
    )  # fmt: skip
    args = parser.parse_args()
    CONNECTIONS = args.connections
    if not LOADGEN.exists():
        raise SystemExit(f"{LOADGEN} is missing: make bench-tools")
    runs = {
        (m, p, k): Run(m, p, k)
        for m in args.methods
        for p in args.processes
        for k in [*BASELINES, *[k for k in args.kinds if k not in BASELINES]]
    }
    for round_no in range(1, args.rounds + 1):  # interleaved: drift hits every kind alike
        for run in runs.values():
            one_run(run, round_no, args.seconds)
    summary = {}
    for (method, processes, kind), run in runs.items():
        base = runs[(method, processes, "baseline")]
        ratios = [a / b for a, b in zip(run.units_per_s, base.units_per_s, strict=True)]
        # The fairest baseline: in each round, the faster of the two empty-handler servers.
        fastest = [
            max(a, b)
            for a, b in zip(
                base.units_per_s, runs[(method, processes, "baseline-aio")].units_per_s, strict=True
            )
        ]
        extra: dict[str, float] = {
            "ratio_to_fastest_empty_median": round(
                statistics.median(a / b for a, b in zip(run.units_per_s, fastest, strict=True)), 3
            )
        }
        if kind == "new" and (method, processes, "new-async") in runs:
            to_async = runs[(method, processes, "new-async")].units_per_s
            extra["ratio_to_new_async_median"] = round(
                statistics.median(a / b for a, b in zip(run.units_per_s, to_async, strict=True)), 3
            )
        summary[f"{method} x{processes} {kind}"] = {
            **extra,
            "units_per_s_median": round(statistics.median(run.units_per_s)),
            "ratio_to_baseline_median": round(statistics.median(ratios), 3),
            "ratios": [round(r, 3) for r in ratios],
            "p99_ms_median": round(statistics.median(run.p99_ms), 2),
            "p99_at_half_load_ms_median": (
                round(statistics.median(run.p99_half_ms), 2) if run.p99_half_ms else None
            ),
            "cpu": run.cpu,
            "raw_units_per_s": [round(u) for u in run.units_per_s],
            "answered_per_s_median": round(statistics.median(run.answered_per_s)),
            "catch_up_s": run.catch_up_s,
        }
    print(json.dumps({"benchmark": "grpc_new_units", "rounds": args.rounds,
                      "seconds": args.seconds, "results": summary}))  # fmt: skip
    for name, s in summary.items():
        print(f"{name:32s} {s['units_per_s_median']:>10,} units/s  "
              f"x{s['ratio_to_baseline_median']} of the empty handler {s['ratios']}, "
              f"x{s['ratio_to_fastest_empty_median']} of the faster empty handler")  # fmt: skip


if __name__ == "__main__":
    main()
