"""Benchmark: stream ingest end to end -- publish to JetStream, ``abkit loader``, PostgreSQL --
against a raw COPY of the same rows, and two loader processes against one.

Per round, interleaved, each on a fresh database (and a fresh stream on the local NATS server):

* **COPY**: psycopg's ``COPY ... FROM STDIN`` of all rows (already encoded) in one transaction
  into a table like ``exposures`` -- the fastest way these rows get into PostgreSQL, the
  ceiling (as in bench_journal.py);
* **stream, 1 loader** and **stream, 2 loaders**: real ``abkit loader`` processes, started and
  subscribed before the clock starts. The clock runs from the first publish until every row is
  in ``exposures`` (polled every 50 ms), so it covers publishing (messages of
  ``--message-rows`` rows -- what one group commit of a busy server holds -- up to 64 in flight,
  each acknowledged by the stream, as servers publish), JetStream, the loaders' checks and their
  idempotent COPY. A run counts only when ``exposures`` then holds exactly the rows published,
  each unit once.

All of it shares this machine's 2 cores: the publisher, nats-server, the loaders and
PostgreSQL. CPU seconds of each during the run are reported, so what bounds the ratio of two
loaders to one is visible.

    .venv/bin/python tests/benchmarks/bench_ingest.py [--rows 300000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa
from bench_grpc import cpu_seconds, descendants, postgres_pids
from bench_journal import copy_rows, rows
from common import scratch_database

from abkit.core.rows import RowKind, encode_exposures
from abkit.infra.stream import StreamSettings, ensure_stream, headers
from abkit.store.engine import create_store_engine

ROOT = Path(__file__).parents[2]
NATS_URL = os.environ.get("ABKIT_TEST_NATS_URL", "nats://127.0.0.1:4222")
IN_FLIGHT = 64


def nats_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-x", "nats-server"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


async def _publish(stream: StreamSettings, bodies: list[tuple[bytes, int]]) -> None:
    import nats

    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream()
        window = asyncio.Semaphore(IN_FLIGHT)
        subject = stream.subject(RowKind.EXPOSURES)

        async def one(i: int, body: bytes, n: int) -> None:
            async with window:
                await js.publish(
                    subject, body, headers=headers(RowKind.EXPOSURES, n, f"b-{i}"), timeout=30
                )

        await asyncio.gather(*(one(i, b, n) for i, (b, n) in enumerate(bodies)))
    finally:
        await nc.close()


async def _prepare(stream: StreamSettings) -> None:
    import nats

    nc = await nats.connect(NATS_URL)
    try:
        await ensure_stream(nc.jetstream(), stream)
    finally:
        await nc.close()


async def _consumer_ready(stream: StreamSettings, durable: str) -> bool:
    import nats

    nc = await nats.connect(NATS_URL)
    try:
        info = await nc.jetstream().consumer_info(stream.name, durable)
        return int(info.num_waiting) > 0  # a loader's fetch is parked on it
    except Exception:  # not created yet
        return False
    finally:
        await nc.close()


async def _delete(stream: StreamSettings) -> None:
    import nats

    nc = await nats.connect(NATS_URL)
    try:
        await nc.jetstream().delete_stream(stream.name)
    finally:
        await nc.close()


def stream_run(url: str, bodies: list[tuple[bytes, int]], total: int, loaders: int) -> dict:
    tag = uuid.uuid4().hex[:10]
    stream = StreamSettings(servers=(NATS_URL,), name=f"BENCH_{tag}", prefix=f"bench-{tag}")
    durable = f"loader-{tag}"
    env = {
        **os.environ,
        "ABKIT_DATABASE_URL": url,
        "ABKIT_STREAM_URL": NATS_URL,
        "ABKIT_STREAM_NAME": stream.name,
        "ABKIT_STREAM_SUBJECT_PREFIX": stream.prefix,
        "ABKIT_LOADER_DURABLE": durable,
    }
    asyncio.run(_prepare(stream))
    logs = [tempfile.TemporaryFile("w+") for _ in range(loaders)]  # noqa: SIM115 -- not a pipe
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "abkit", "loader"],
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for log in logs
    ]
    engine = create_store_engine(url)
    try:
        deadline = time.monotonic() + 60
        while not asyncio.run(_consumer_ready(stream, durable)):
            if time.monotonic() > deadline:
                raise SystemExit("the loaders never subscribed")
            time.sleep(0.2)
        time.sleep(1.0)  # every loader subscribed, not only the first
        pids = [d for p in procs for d in descendants(p.pid)]
        cpu_before = (cpu_seconds(pids), cpu_seconds(postgres_pids()), cpu_seconds(nats_pids()))
        own_before = time.process_time()
        started = time.perf_counter()
        asyncio.run(_publish(stream, bodies))
        published = time.perf_counter() - started
        own = time.process_time() - own_before
        count = 0
        while count < total and time.perf_counter() - started < 600:
            with engine.connect() as conn:
                count = conn.execute(sa.text("SELECT count(*) FROM exposures")).scalar_one()
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        cpu_after = (cpu_seconds(pids), cpu_seconds(postgres_pids()), cpu_seconds(nats_pids()))
        with engine.connect() as conn:
            stored, distinct = conn.execute(
                sa.text("SELECT count(*), count(DISTINCT unit_id) FROM exposures")
            ).one()
        if not stored == distinct == total:
            raise SystemExit(f"invalid run: {total} rows published, {stored} ({distinct}) stored")
    finally:
        engine.dispose()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p, log in zip(procs, logs, strict=True):
            p.wait(timeout=120)
            log.seek(0)
            if p.returncode != 0:
                raise SystemExit(
                    f"invalid run: a loader exited {p.returncode}: {log.read()[-2000:]}"
                )
        asyncio.run(_delete(stream))
    return {
        "rows_per_s": total / elapsed,
        "publish_rows_per_s": total / published,
        "cpu": {
            "loaders_s": round(cpu_after[0] - cpu_before[0], 2),
            "postgres_s": round(cpu_after[1] - cpu_before[1], 2),
            "nats_s": round(cpu_after[2] - cpu_before[2], 2),
            "publisher_s": round(own, 2),
            "wall_s": round(elapsed, 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--message-rows", type=int, default=500)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"copy": [], "loaders=1": [], "loaders=2": []}
    for r in range(args.rounds):
        data = rows(args.rows, f"r{r}")
        text = encode_exposures(data)
        chunks = [data[i : i + args.message_rows] for i in range(0, len(data), args.message_rows)]
        bodies = [(encode_exposures(chunk).encode(), len(chunk)) for chunk in chunks]
        with scratch_database() as url:
            engine = create_store_engine(url)
            with engine.begin() as conn:
                conn.execute(sa.text("CREATE TABLE exposures_copy (LIKE exposures INCLUDING ALL)"))
            results["copy"].append({"rows_per_s": args.rows / copy_rows(engine, text)})
            engine.dispose()
        for loaders in (1, 2):
            with scratch_database() as url:
                run = stream_run(url, bodies, args.rows, loaders)
            results[f"loaders={loaders}"].append(run)
            print(f"  round {r + 1} {loaders} loader(s): {run['rows_per_s']:,.0f} rows/s "
                  f"(publishing alone {run['publish_rows_per_s']:,.0f}) cpu {run['cpu']}",
                  file=sys.stderr, flush=True)  # fmt: skip
        print(f"  round {r + 1} COPY: {results['copy'][-1]['rows_per_s']:,.0f} rows/s",
              file=sys.stderr, flush=True)  # fmt: skip
    copy = [c["rows_per_s"] for c in results["copy"]]
    one = [c["rows_per_s"] for c in results["loaders=1"]]
    two = [c["rows_per_s"] for c in results["loaders=2"]]
    summary = {
        "benchmark": "stream_ingest_vs_copy_postgresql",
        "rows": args.rows,
        "rounds": args.rounds,
        "message_rows": args.message_rows,
        "copy_rows_per_s": round(statistics.median(copy)),
        "one_loader_rows_per_s": round(statistics.median(one)),
        "two_loaders_rows_per_s": round(statistics.median(two)),
        "ratios_to_copy": [round(o / c, 3) for o, c in zip(one, copy, strict=True)],
        "two_to_one": [round(t / o, 3) for t, o in zip(two, one, strict=True)],
        "runs": results,
    }
    summary["one_loader_to_copy"] = round(statistics.median(summary["ratios_to_copy"]), 3)
    summary["two_to_one_median"] = round(statistics.median(summary["two_to_one"]), 3)
    print(json.dumps(summary))
    print(
        f"stream -> loader -> PostgreSQL {summary['one_loader_rows_per_s']:,} rows/s vs COPY "
        f"{summary['copy_rows_per_s']:,}: x{summary['one_loader_to_copy']} "
        f"{summary['ratios_to_copy']} (goal >= 0.5); two loaders "
        f"{summary['two_loaders_rows_per_s']:,} rows/s: x{summary['two_to_one_median']} of one "
        f"{summary['two_to_one']} (goal >= 1.6)"
    )


if __name__ == "__main__":
    main()
