"""Benchmark: exposures through the local journal into PostgreSQL, against a raw COPY of the
same rows.

Both write the same rows, in the same run, into tables of the same schema on the same server:

* **COPY**: psycopg's ``COPY ... FROM STDIN`` of all rows (already encoded) in one transaction --
  the fastest way rows get into PostgreSQL, the ceiling;
* **the journal**: what a server does -- 16 request threads record 100 rows a call (as
  AssignBatch does) and wait for each call's group commit (fsync) before the next, while the
  drain copies durable records into the store, idempotently, checkpointing after each commit;
  timed until every row is in the table (verified by count).

Goal (issue #8, now through the durable journal): rows/s >= 0.5x COPY's. ``record()`` latency
(append + wait for durability) is reported: what an RPC waits before its answer.

    .venv/bin/python tests/benchmarks/bench_journal.py [--rows 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from common import scratch_database

from abkit.config import Settings
from abkit.core.model import Exposure
from abkit.core.rows import EXPOSURE_COLUMNS, RowKind, encode_exposures
from abkit.infra.drain import JournalDrain
from abkit.infra.journal import Journal
from abkit.infra.recorder import JournalRecorder
from abkit.store.engine import create_store_engine
from abkit.store.sql import SqlStore

THREADS = 16
CALL = 100


def rows(n: int, tag: str) -> list[Exposure]:
    t0 = datetime(2026, 6, 1, tzinfo=UTC)
    return [
        Exposure(
            "bench", f"{tag}-user-{i}", "control" if i % 2 else "treatment", "v1",
            "0123456789abcdef", t0 + timedelta(microseconds=i), "0" * 32, "0" * 16,
        )
        for i in range(n)
    ]  # fmt: skip


def copy_rows(engine: sa.Engine, text: str) -> float:
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE exposures_copy"))
    raw = engine.raw_connection()
    try:
        started = time.perf_counter()
        cursor = raw.cursor()
        columns = ", ".join(EXPOSURE_COLUMNS)
        with cursor.copy(f"COPY exposures_copy ({columns}) FROM STDIN") as copy:  # type: ignore[attr-defined]
            copy.write(text)
        raw.commit()
        return time.perf_counter() - started
    finally:
        raw.close()


def journal_rows(url: str, data: list[Exposure], batch_rows: int) -> tuple[float, list[float]]:
    store = SqlStore.from_url(url)
    calls = [encode_exposures(data[i : i + CALL]) for i in range(0, len(data), CALL)]
    with tempfile.TemporaryDirectory(prefix="abkit-journal-") as directory:
        journal = Journal(directory, commit_delay=Settings().commit_delay_seconds)
        journal.open()
        recorder = JournalRecorder(journal, RowKind.EXPOSURES)
        drain = JournalDrain(journal, store, batch_rows=batch_rows, interval=0.05)
        drain.start()
        waits: list[float] = []
        lock = threading.Lock()

        def caller(k: int) -> None:
            mine = []
            for text in calls[k::THREADS]:
                t = time.perf_counter()
                if not recorder.record(text, CALL).wait(30):
                    raise SystemExit("a record was not durable in 30 s")
                mine.append(time.perf_counter() - t)
            with lock:
                waits.extend(mine)

        started = time.perf_counter()
        threads = [threading.Thread(target=caller, args=(k,)) for k in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if not journal.wait_consumed(journal.durable_end, 600):
            raise SystemExit("the drain did not finish")
        elapsed = time.perf_counter() - started
        journal.close()
        drain.stop(10)
        journal.release()
    with store.transaction() as tx:
        stored = sum(tx.exposures.counts("bench").values())
    store.close()
    if stored != len(data):
        raise SystemExit(f"invalid run: {len(data)} rows recorded, {stored} stored")
    return elapsed, waits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-rows", type=int, default=Settings().writer_batch_size)
    args = parser.parse_args()
    copies, journals, waits = [], [], []
    for r in range(args.rounds):  # a fresh database per round, COPY and journal interleaved
        with scratch_database() as url:
            engine = create_store_engine(url)
            with engine.begin() as conn:
                conn.execute(sa.text("CREATE TABLE exposures_copy (LIKE exposures INCLUDING ALL)"))
            data = rows(args.rows, f"r{r}")
            copies.append(args.rows / copy_rows(engine, encode_exposures(data)))
            engine.dispose()
            elapsed, round_waits = journal_rows(url, data, args.batch_rows)
            journals.append(args.rows / elapsed)
            waits += round_waits
    waits.sort()
    ratios = [j / c for j, c in zip(journals, copies, strict=True)]
    result = {
        "benchmark": "journal_vs_copy_postgresql",
        "rows": args.rows,
        "rounds": args.rounds,
        "batch_rows": args.batch_rows,
        "copy_rows_per_s": round(statistics.median(copies)),
        "journal_rows_per_s": round(statistics.median(journals)),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratios": [round(r, 3) for r in ratios],
        "ratio_goal": 0.5,
        "record_wait_p50_ms": round(waits[len(waits) // 2] * 1e3, 2),
        "record_wait_p99_ms": round(waits[int(len(waits) * 0.99)] * 1e3, 2),
        "raw": {"copy": copies, "journal": journals},
    }
    print(json.dumps(result))
    print(
        f"journal -> PostgreSQL {result['journal_rows_per_s']:,} rows/s vs COPY "
        f"{result['copy_rows_per_s']:,} rows/s: ratio {result['ratio_median']} {result['ratios']} "
        f"(goal >= 0.5); record + durable wait p50 {result['record_wait_p50_ms']} ms, p99 "
        f"{result['record_wait_p99_ms']} ms"
    )


if __name__ == "__main__":
    main()
