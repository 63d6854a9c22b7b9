"""Probe: what bounds the exposures *stored* per second (BENCHMARKS.md, gRPC section).

Two measurements, each on a fresh database (``common.scratch_database``):

* ``copy`` -- one ``COPY`` of the same 300,000 encoded exposure rows, alone on the machine, into
  copies of the ``exposures`` table (``LIKE exposures INCLUDING ALL``): as it is, without the
  ingestion-order index ``(experiment_key, seq)``, and without any index; 3 interleaved
  repetitions, the median. What PostgreSQL's own work per row is, and which part of it is
  index maintenance.
* ``drain`` -- one ``abkit grpc`` server (durable, new units) under the Go generator's
  ``AssignBatch`` load for 10 s, the exposure sequence read once a second during the run and
  after it until every answered unit is stored: rows stored per second while the server
  answers, and once it is idle.

A measurement aid, not a benchmark with a goal; ``bench_grpc.py`` makes the figures.

    .venv/bin/python tests/benchmarks/probe_ingest.py copy
    .venv/bin/python tests/benchmarks/probe_ingest.py drain
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import bench_grpc as bg
import psycopg
import sqlalchemy as sa
from common import scratch_database

from abkit.core.rows import exposure_head, row_tail
from abkit.store.engine import create_store_engine

ROWS = 300_000
COLUMNS = (
    "experiment_key, arm_key, model_version, config_checksum, exposed_at, trace_id, span_id, "
    "unit_id"
)
VARIANTS = {
    "as it is": [],
    "without the (experiment_key, seq) index": ["DROP INDEX {t}_experiment_key_seq_idx"],
    "without any index": [
        "DROP INDEX {t}_experiment_key_seq_idx",
        "ALTER TABLE {t} DROP CONSTRAINT {t}_pkey",
    ],
}
DRAWN = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM abkit_exposure_seq"


def _rows(tag: str) -> str:
    head = exposure_head("bench", "treatment", "v2", "0123456789abcdef")
    start = datetime(2026, 12, 3, tzinfo=UTC)
    trace, span = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    return "".join(
        f"{head}{row_tail(start + timedelta(microseconds=37 * i), trace, span)}{tag}-{i}\n"
        for i in range(ROWS)
    )


def copy_cost() -> None:
    with scratch_database() as url:
        dsn = url.replace("postgresql+psycopg://", "postgresql://")
        rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
        with psycopg.connect(dsn, autocommit=True) as conn:
            for rep in range(3):
                for n, (name, changes) in enumerate(VARIANTS.items()):
                    table = f"probe_{n}"
                    conn.execute(f"DROP TABLE IF EXISTS {table}")
                    conn.execute(f"CREATE TABLE {table} (LIKE exposures INCLUDING ALL)")
                    for change in changes:
                        conn.execute(change.format(t=table))
                    text = _rows(f"{rep}-{n}")
                    started = time.perf_counter()
                    with (
                        conn.transaction(),
                        conn.cursor().copy(f"COPY {table} ({COLUMNS}) FROM STDIN") as copy,
                    ):
                        copy.write(text)
                    rates[name].append(ROWS / (time.perf_counter() - started))
                    count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
                    assert count is not None and count[0] == ROWS, count
        for name, values in rates.items():
            print(f"{name:42s} {statistics.median(values):>9,.0f} rows/s  "
                  f"{[round(v) for v in values]}")  # fmt: skip


def drain() -> None:
    with scratch_database() as url, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "exp.yaml").write_text(bg.EXPERIMENT)
        env = {**os.environ, "ABKIT_DATABASE_URL": url}
        subprocess.run(
            [sys.executable, "-m", "abkit", "experiment", "apply", "-f", str(work / "exp.yaml"),
             "--start"], env=env, check=True, capture_output=True,
        )  # fmt: skip
        engine = create_store_engine(url)
        samples: list[tuple[float, int]] = []
        done = threading.Event()

        def sample() -> None:
            started = time.monotonic()
            while not done.is_set():
                with engine.connect() as conn:
                    samples.append(
                        (time.monotonic() - started, conn.execute(sa.text(DRAWN)).scalar_one())
                    )
                time.sleep(1.0)

        with bg.server("new", 1, env, work) as (port, _pids):
            sampler = threading.Thread(target=sample)
            sampler.start()
            report = bg.loadgen(port, "AssignBatch", 10, "probe-")
            asked = int(report["units_asked"])  # type: ignore[call-overload]
            bg.catch_up(url, "probe-", asked)
            done.set()
            sampler.join()
        engine.dispose()
        print(f"answered {float(report['units_per_second']):,.0f} units/s "  # type: ignore[arg-type]
              f"for {report['seconds']} s; {asked:,} units")  # fmt: skip
        for (t0, n0), (t1, n1) in pairwise(samples):
            print(f"  {t0:5.1f}-{t1:5.1f} s  stored {(n1 - n0) / (t1 - t0):>9,.0f} rows/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["copy", "drain"])
    args = parser.parse_args()
    copy_cost() if args.what == "copy" else drain()


if __name__ == "__main__":
    main()
