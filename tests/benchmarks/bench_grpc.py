"""Benchmark: gRPC Assign and AssignBatch of an abkit server against an empty-handler server.

The servers run as separate processes on this machine, the same thread-pool gRPC server, the
same service and message types; the baseline's handlers do nothing (``abkit.tools.loadtest``). abkit
runs as ``abkit grpc`` with exposure logging into PostgreSQL, in two configurations:

* **default** -- no exporter configured: the caller's trace context is read and every row gets
  its trace id and a span id, but no span is recorded (nothing would receive it) and no metric
  is measured (no reader);
* **spans recorded** -- ``OTEL_TRACES_SAMPLER=always_on``: a full SERVER span per RPC (ended and
  handed to the SDK; with no exporter it goes no further).

Each load runs against each server, interleaved, in the same run:

* ``h2load`` (Debian's nghttp2-client, C): sends pre-serialized gRPC frames, so the client
  costs almost nothing and the server is what is measured -- the primary figures. Its body is
  fixed, so every call asks for the same unit(s): a returning user, whose first exposure is
  already logged (abkit logs first exposures only);
* ``abkit loadtest`` (Python asyncio): a new unit on every call, so every Assign writes an
  exposure row -- the writer and PostgreSQL under load, in the same process.

``AssignBatch`` is also measured with ``--processes N`` (default: the machine's cores): N abkit
server processes sharing the port, against N empty-handler processes sharing a port the same way,
both with 16 h2load connections so the kernel spreads them over the processes.

Goals (issue #8): Assign >= 0.8x the baseline's throughput; AssignBatch (100 units a call)
>= 150,000 assignments/s with logging on; p99 latency reported at half the maximum load.

    .venv/bin/python tests/benchmarks/bench_grpc.py [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from common import scratch_database

from abkit.rpc.processes import reserve_port
from abkit.tools.loadtest import run_load
from abkit.v1 import assignment_pb2 as pb

ROOT = Path(__file__).parents[2]
EXPERIMENT = """
key: bench
arms:
  - {key: control, model_version: v1, weight: 0.5, control: true}
  - {key: treatment, model_version: v2, weight: 0.5}
"""


def frame(message: object) -> bytes:
    payload = message.SerializeToString()  # type: ignore[attr-defined]
    return struct.pack(">BI", 0, len(payload)) + payload


def h2load(
    port: int, method: str, body: Path, seconds: float, clients: int = 4, streams: int = 16
) -> dict[str, float]:
    out = subprocess.run(
        [
            "h2load", "-D", f"{seconds:g}", "-c", str(clients), "-m", str(streams), "-t", "1",
            "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
            f"http://127.0.0.1:{port}/abkit.v1.AssignmentService/{method}",
        ],
        capture_output=True, text=True, check=False,  # exits 1 when -D ends with calls in flight
    ).stdout  # fmt: skip
    found = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    if found is None:
        raise SystemExit(f"h2load said:\n{out}")
    rps = float(found.group(1))
    ok = int(re.search(r"(\d+) succeeded", out).group(1))  # type: ignore[union-attr]
    failed = int(re.search(r"(\d+) failed", out).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "succeeded": ok, "failed": failed}


def start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    port = int(re.search(r"port (\d+)", line).group(1))  # type: ignore[union-attr]
    return proc, port


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        raise SystemExit("h2load is missing: apt-get install nghttp2-client")

    work = Path(tempfile.mkdtemp(prefix="abkit-bench-"))
    servers: list[subprocess.Popen[str]] = []
    with scratch_database() as url:
        try:
            run(args, url, work, servers)
        finally:
            for proc in servers:
                proc.terminate()
                proc.wait(timeout=30)
            shutil.rmtree(work, ignore_errors=True)


def run(
    args: argparse.Namespace, url: str, work: Path, servers: list[subprocess.Popen[str]]
) -> None:
    (work / "exp.yaml").write_text(EXPERIMENT)
    env = {**os.environ, "ABKIT_DATABASE_URL": url, "ABKIT_SPOOL_DIR": str(work / "spool")}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "abkit",
            "experiment",
            "apply",
            "-f",
            str(work / "exp.yaml"),
            "--start",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    abkit_proc, abkit_port = start(
        [sys.executable, "-m", "abkit", "grpc", "--address", "127.0.0.1:0"], env
    )
    traced_proc, traced_port = start(
        [sys.executable, "-m", "abkit", "grpc", "--address", "127.0.0.1:0"],
        {**env, "OTEL_TRACES_SAMPLER": "always_on", "ABKIT_SPOOL_DIR": str(work / "spool-2")},
    )
    base_proc, base_port = start([sys.executable, "-m", "abkit.tools.loadtest", "127.0.0.1:0"], env)
    servers += [abkit_proc, traced_proc, base_proc]
    # The same two servers with one process per core (--processes), the port shared with
    # SO_REUSEPORT: the baseline's processes bind one reserved port the same way.
    multi_proc, multi_port = start(
        [
            sys.executable, "-m", "abkit", "grpc", "--address", "127.0.0.1:0",
            "--processes", str(args.processes),
        ],
        {**env, "ABKIT_SPOOL_DIR": str(work / "spool-3")},
    )  # fmt: skip
    servers.append(multi_proc)
    reserved = reserve_port("127.0.0.1", 0)
    multi_base_port = reserved.getsockname()[1]
    for _ in range(args.processes):
        proc, _ = start(
            [sys.executable, "-m", "abkit.tools.loadtest", f"127.0.0.1:{multi_base_port}"], env
        )
        servers.append(proc)
    single = work / "assign.bin"
    single.write_bytes(frame(pb.AssignRequest(unit_id="user-12345", experiment_keys=["bench"])))
    batch = work / "batch.bin"
    batch.write_bytes(
        frame(
            pb.AssignBatchRequest(
                requests=[
                    pb.AssignRequest(unit_id=f"user-{i}", experiment_keys=["bench"])
                    for i in range(100)
                ]
            )
        )
    )
    rows: dict[str, list[float]] = {
        k: []
        for k in (
            "h2_assign",
            "h2_assign_base",
            "h2_assign_spans",
            "h2_batch",
            "h2_batch_base",
            "py_assign",
            "py_assign_base",
            "h2_batch_multi",
            "h2_batch_multi_base",
        )
    }
    for _ in range(args.rounds):  # interleaved rounds: drift hits both servers alike
        rows["h2_assign"].append(h2load(abkit_port, "Assign", single, args.seconds)["rps"])
        rows["h2_assign_base"].append(h2load(base_port, "Assign", single, args.seconds)["rps"])
        rows["h2_assign_spans"].append(h2load(traced_port, "Assign", single, args.seconds)["rps"])
        rows["h2_batch"].append(h2load(abkit_port, "AssignBatch", batch, args.seconds)["rps"] * 100)
        rows["h2_batch_base"].append(
            h2load(base_port, "AssignBatch", batch, args.seconds)["rps"] * 100
        )
        # More connections, so the kernel's hash spreads them over the processes evenly.
        rows["h2_batch_multi"].append(
            h2load(multi_port, "AssignBatch", batch, args.seconds, clients=16)["rps"] * 100
        )
        rows["h2_batch_multi_base"].append(
            h2load(multi_base_port, "AssignBatch", batch, args.seconds, clients=16)["rps"] * 100
        )
        rows["py_assign"].append(
            run_load(
                f"127.0.0.1:{abkit_port}", duration=args.seconds, experiment_keys=["bench"]
            ).rps
        )
        rows["py_assign_base"].append(run_load(f"127.0.0.1:{base_port}", duration=args.seconds).rps)
    medians = {k: statistics.median(v) for k, v in rows.items()}
    # Latency at half of abkit's maximum Assign rate, with the Python client (h2load's
    # latency histogram mixes in its own queueing).
    half = run_load(
        f"127.0.0.1:{abkit_port}",
        duration=args.seconds,
        rate=medians["py_assign"] / 2,
        concurrency=16,
        experiment_keys=["bench"],
    )
    result = {
        "benchmark": "grpc_assign_vs_empty_handler",
        "rounds": args.rounds,
        "seconds": args.seconds,
        "h2load_assign_rps": round(medians["h2_assign"]),
        "h2load_baseline_assign_rps": round(medians["h2_assign_base"]),
        "h2load_assign_ratio": round(medians["h2_assign"] / medians["h2_assign_base"], 3),
        "h2load_assign_spans_recorded_rps": round(medians["h2_assign_spans"]),
        "h2load_assign_spans_recorded_ratio": round(
            medians["h2_assign_spans"] / medians["h2_assign_base"], 3
        ),
        "h2load_batch_assignments_per_s": round(medians["h2_batch"]),
        "h2load_baseline_batch_units_per_s": round(medians["h2_batch_base"]),
        "processes": args.processes,
        "h2load_batch_multi_assignments_per_s": round(medians["h2_batch_multi"]),
        "h2load_baseline_batch_multi_units_per_s": round(medians["h2_batch_multi_base"]),
        "python_client_assign_rps": round(medians["py_assign"]),
        "python_client_baseline_rps": round(medians["py_assign_base"]),
        "python_client_assign_ratio": round(medians["py_assign"] / medians["py_assign_base"], 3),
        "half_load_rps": round(half.rps),
        "half_load_p50_ms": round(half.p50_ms, 2),
        "half_load_p99_ms": round(half.p99_ms, 2),
        "half_load_p999_ms": round(half.p999_ms, 2),
        "server_peak_rss_mb": round(peak_rss_mb(abkit_proc.pid), 1),
        "baseline_peak_rss_mb": round(peak_rss_mb(base_proc.pid), 1),
        "raw": rows,
    }
    print(json.dumps(result))
    r = result
    print(
        f"Assign (h2load): abkit {r['h2load_assign_rps']:,} req/s vs empty handler "
        f"{r['h2load_baseline_assign_rps']:,} -> {r['h2load_assign_ratio']} (goal >= 0.8), "
        f"with spans recorded {r['h2load_assign_spans_recorded_ratio']}; "
        f"AssignBatch: {r['h2load_batch_assignments_per_s']:,} assignments/s "
        f"(goal >= 150,000; empty handler {r['h2load_baseline_batch_units_per_s']:,}), "
        f"with --processes {r['processes']}: {r['h2load_batch_multi_assignments_per_s']:,} "
        f"(empty handler, {r['processes']} processes: "
        f"{r['h2load_baseline_batch_multi_units_per_s']:,}); "
        f"Python client (a new unit every call) ratio {r['python_client_assign_ratio']}; "
        f"at half load "
        f"({r['half_load_rps']:,} req/s) p99 {r['half_load_p99_ms']} ms; "
        f"server peak RSS {r['server_peak_rss_mb']} MB"
    )


if __name__ == "__main__":
    main()
