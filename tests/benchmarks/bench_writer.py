"""Benchmark: the exposure/event writer into PostgreSQL, against a raw COPY of the same rows.

Both write the same rows, in the same run, into tables of the same schema on the same server:

* **COPY**: psycopg's ``COPY ... FROM STDIN`` of all rows in one transaction -- the fastest way
  rows get into PostgreSQL, the ceiling;
* **the writer**: what a server does -- the request path calls ``submit()`` with small chunks
  (as Assign would) and a background thread writes batches of ``ABKIT_WRITER_BATCH_SIZE`` rows,
  idempotently, until ``flush()`` returns.

Goal (issue #8): writer rows/s >= 0.5x COPY's, and the request path never waits on it
(``submit()`` latency is reported: it only appends to an in-memory queue).

    .venv/bin/python tests/benchmarks/bench_writer.py [--rows 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from common import scratch_database

from abkit.config import Settings
from abkit.core.assignment import Exposure
from abkit.infra.writer import BufferedWriter
from abkit.store.engine import create_store_engine
from abkit.store.sql import SqlStore

COLUMNS = (
    "experiment_key", "unit_id", "arm_key", "model_version", "config_checksum", "exposed_at",
    "trace_id", "span_id",
)  # fmt: skip


def rows(n: int, tag: str) -> list[Exposure]:
    t0 = datetime(2026, 6, 1, tzinfo=UTC)
    return [
        Exposure(
            "bench",
            f"{tag}-user-{i}",
            "control" if i % 2 else "treatment",
            "v1",
            "0123456789abcdef",
            t0 + timedelta(microseconds=i),
            "0" * 32,
            "0" * 16,
        )
        for i in range(n)
    ]


def copy_rows(engine: sa.Engine, data: list[Exposure]) -> float:
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE exposures_copy"))
    raw = engine.raw_connection()
    try:
        started = time.perf_counter()
        cursor = raw.cursor()
        with cursor.copy(f"COPY exposures_copy ({', '.join(COLUMNS)}) FROM STDIN") as copy:  # type: ignore[attr-defined]
            for row in data:
                copy.write_row(row)
        raw.commit()
        return time.perf_counter() - started
    finally:
        raw.close()


def write_rows(url: str, data: list[Exposure], batch_size: int) -> tuple[float, list[float]]:
    store = SqlStore.from_url(url)

    def sink(batch: list[Exposure]) -> int:
        with store.transaction() as tx:
            return tx.exposures.add(batch)

    writer: BufferedWriter[Exposure] = BufferedWriter(
        "bench", sink, batch_size=batch_size, flush_interval=0.05, queue_size=len(data) + 1
    )
    writer.start()
    submit_seconds: list[float] = []
    started = time.perf_counter()
    for i in range(0, len(data), 100):  # the request path: small chunks, as Assign does
        t = time.perf_counter()
        writer.submit(data[i : i + 100])
        submit_seconds.append(time.perf_counter() - t)
    if not writer.flush(600):
        raise SystemExit("the writer did not finish")
    elapsed = time.perf_counter() - started
    writer.close(10)
    store.close()
    return elapsed, submit_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=Settings().writer_batch_size)
    args = parser.parse_args()
    with scratch_database() as url:
        engine = create_store_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE exposures_copy (LIKE exposures INCLUDING ALL)"))
        copies, writes, submits = [], [], []
        for r in range(args.rounds):
            data = rows(args.rows, f"r{r}")
            copies.append(args.rows / copy_rows(engine, data))
            elapsed, submit_seconds = write_rows(url, data, args.batch_size)
            writes.append(args.rows / elapsed)
            submits += submit_seconds
        engine.dispose()
        submits.sort()
        result = {
            "benchmark": "writer_vs_copy_postgresql",
            "rows": args.rows,
            "rounds": args.rounds,
            "batch_size": args.batch_size,
            "copy_rows_per_s": round(statistics.median(copies)),
            "writer_rows_per_s": round(statistics.median(writes)),
            "ratio": round(statistics.median(writes) / statistics.median(copies), 3),
            "ratio_goal": 0.5,
            "submit_p50_us": round(submits[len(submits) // 2] * 1e6, 1),
            "submit_p99_us": round(submits[int(len(submits) * 0.99)] * 1e6, 1),
            "submit_max_us": round(submits[-1] * 1e6, 1),
            "raw": {"copy": copies, "writer": writes},
        }
        print(json.dumps(result))
        print(
            f"writer {result['writer_rows_per_s']:,} rows/s vs COPY {result['copy_rows_per_s']:,}"
            f" rows/s: ratio {result['ratio']} (goal >= 0.5); submit() p99 "
            f"{result['submit_p99_us']} us (the request path never waits on the database)"
        )


if __name__ == "__main__":
    main()
