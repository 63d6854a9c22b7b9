"""Benchmark: ``LocalClient`` (assignment in the caller's process) against GrowthBook's Python
SDK and against a gRPC ``Assign`` through ``Client``; its memory; config propagation.

Setup: a scratch PostgreSQL database with **1,000 running experiments**, each the question of
``bench_peers`` (coverage 90 %, targeting ``country in [US, CA, GB] and app_version >= 120``, two
arms), served by one ``abkit grpc`` process. In each of 5 interleaved rounds, with units **new
in every round** (the round is in the unit id), each timed ``LocalClient`` phase starting 2 s
after the previous phase's rows were written and checked (PostgreSQL's work on ~600,000 rows a
round otherwise lands on the first phase timed after it):

* ``local_one``: ``LocalClient.assign`` of 100,000 new units on one experiment, attributes
  passed -- the answer, plus the exposure enqueued (deduplication, time, the caller's trace),
  by a client whose sender is idle while timed (``flush_interval`` of an hour; the queue is
  flushed, and checked, after the timing): the call the goal is about;
* ``local_one_sending``: the same with the default client, whose sender thread sends the queue
  to the server every 100 ms *while* the calls are timed -- its CPU and the GIL it takes are in
  the figure, as they are in a serving process;
* ``local_many``: ``LocalClient.assign_many`` of 10,000 new units on 50 experiments (idle
  sender);
* ``growthbook``: GrowthBook 4.0.0 (``.bench-venv``) asked the same question for the same number
  of new users: ``set_attributes`` per user, ``run`` per experiment, with a tracking callback
  that appends the exposure to a list (GrowthBook's way to log one) -- equal work;
* ``remote``: ``Client.assign`` (one gRPC ``Assign`` each, its exposure made durable by the
  server before the answer) for 3,000 new units from one thread: the calls/s one caller gets.

After each round every exposure of the round is checked in PostgreSQL (one per in-experiment
answer; a missing row, an ``ERROR`` answer or a dropped row makes the run invalid).

Then: the resident memory a ``LocalClient`` adds to a fresh process once it holds the 1,000
experiments (VmRSS after ``wait_ready`` minus before creating it), and the propagation of
``abkit experiment promote`` to 200 ``LocalClient`` s of 2 server processes (the test's
measurement, ``tests/integration/test_local_client.py``), three times on fresh databases.

    .venv/bin/python tests/benchmarks/bench_local_client.py
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).parents[2]))

from abkit.client import Client, LocalClient
from abkit.core.model import Reason
from abkit.core.spec import experiment_from_dict
from abkit.infra.clock import SystemClock
from abkit.services.experiments import ExperimentService
from abkit.store.sql import SqlStore
from tests.benchmarks.bench_peers import experiment_doc
from tests.benchmarks.common import scratch_database
from tests.integration.test_local_client import _propagation
from tests.serving import abkit_process

ROOT = Path(__file__).parents[2]
BENCH_PYTHON = ROOT / ".bench-venv" / "bin" / "python"
EXPERIMENTS = 1000
MANY = 50
ONE_UNITS = 100_000
MANY_UNITS = 10_000
REMOTE_UNITS = 3_000
ROUNDS = 5
SETTLE_SECONDS = 2.0
ATTRIBUTES = {"country": "US", "app_version": 130}
GOAL_US = 3.0
GOAL_GROWTHBOOK = 10.0
GOAL_PROPAGATION_S = 1.0


GROWTHBOOK = r"""
import json, sys, time
from growthbook import GrowthBook, Experiment
prefix, experiments, users = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ids = [f"{prefix}-{i}" for i in range(users)]
exps = [Experiment(key=f"exp-{i}", variations=["v1", "v2"], coverage=0.9, weights=[0.5, 0.5],
                   condition={"country": {"$in": ["US", "CA", "GB"]}, "app_version": {"$gte": 120}})
        for i in range(experiments)]
exposures = []
def track(experiment, result, user_context=None):
    exposures.append((experiment.key, result.variationId, result.hashValue, time.time_ns()))
gb = GrowthBook(attributes={}, on_experiment_viewed=track)
started = time.perf_counter()
for unit in ids:
    gb.set_attributes({"id": unit, "country": "US", "app_version": 130})
    for e in exps:
        gb.run(e)
elapsed = time.perf_counter() - started
assert len(exposures) > 0.8 * users * experiments, len(exposures)
print(json.dumps({"us_per_call": elapsed / users * 1e6, "exposures": len(exposures)}))
"""


def growthbook(prefix: str, experiments: int, users: int) -> float:
    if not BENCH_PYTHON.exists():
        raise SystemExit("GrowthBook lives in .bench-venv: `make bench-tools` creates it")
    done = subprocess.run(
        [str(BENCH_PYTHON), "-c", GROWTHBOOK, prefix, str(experiments), str(users)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(json.loads(done.stdout.strip().splitlines()[-1])["us_per_call"])


def local_one(client: LocalClient, prefix: str) -> tuple[float, int]:
    units = [f"{prefix}-{i}" for i in range(ONE_UNITS)]
    assign = client.assign
    started = time.perf_counter()
    answers = [assign(u, "exp-0", default="v1", attributes=ATTRIBUTES) for u in units]
    elapsed = time.perf_counter() - started
    if any(a.reason is Reason.ERROR for a in answers):
        raise SystemExit(f"invalid run: an ERROR answer ({answers[0].error})")
    return elapsed / ONE_UNITS * 1e6, sum(a.in_experiment for a in answers)


def local_many(client: LocalClient, prefix: str) -> tuple[float, int]:
    units = [f"{prefix}-{i}" for i in range(MANY_UNITS)]
    defaults = {f"exp-{i}": "v1" for i in range(MANY)}
    assign_many = client.assign_many
    started = time.perf_counter()
    answers = [assign_many(u, defaults, attributes=ATTRIBUTES) for u in units]
    elapsed = time.perf_counter() - started
    flat = [a for many in answers for a in many.values()]
    if len(flat) != MANY_UNITS * MANY or any(a.reason is Reason.ERROR for a in flat):
        raise SystemExit("invalid run: an ERROR answer in assign_many")
    return elapsed / MANY_UNITS * 1e6, sum(a.in_experiment for a in flat)


def remote(address: str, prefix: str) -> tuple[float, int]:
    with Client(address, timeout=5) as client:
        client.assign("warm-up", "exp-0", default="v1", attributes=ATTRIBUTES)
        started = time.perf_counter()
        answers = [
            client.assign(f"{prefix}-{i}", "exp-0", default="v1", attributes=ATTRIBUTES)
            for i in range(REMOTE_UNITS)
        ]
        elapsed = time.perf_counter() - started
    if any(a.reason is Reason.ERROR for a in answers):
        raise SystemExit(f"invalid run: a remote ERROR answer ({answers[0].error})")
    return REMOTE_UNITS / elapsed, sum(a.in_experiment for a in answers)


def send(*clients: LocalClient) -> None:
    """Everything queued sent (and acknowledged durable by the server), nothing dropped."""
    for c in clients:
        if not c.flush(600):
            raise SystemExit(f"invalid run: exposures not sent: {c.status()}")
        status = c.status()
        if status.exposures_dropped or status.events_dropped:
            raise SystemExit(f"invalid run: rows dropped: {status}")


def stored(engine: sa.Engine, prefix: str) -> int:
    with engine.connect() as conn:
        query = sa.text("SELECT count(*) FROM exposures WHERE unit_id LIKE :p")
        return int(conn.execute(query, {"p": f"{prefix}-%"}).scalar_one())


MEMORY = r"""
import sys
from pathlib import Path
def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
import grpc, abkit.client, abkit.core.assignment, abkit.rpc.config_wire
before = rss()
client = abkit.client.LocalClient(sys.argv[1])
assert client.wait_ready(60)
status = client.status()
after = rss()
client.close()
print(status.experiments, round(after - before, 1))
"""


def memory(address: str) -> tuple[int, float]:
    done = subprocess.run(
        [sys.executable, "-c", MEMORY, address],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    experiments, megabytes = done.stdout.split()
    return int(experiments), float(megabytes)


def main() -> None:
    results: dict[str, list[float]] = {k: [] for k in (
        "local_one_us", "local_one_sending_us", "local_many_us", "growthbook_one_us",
        "growthbook_many_us", "remote_calls_per_s", "growthbook_one_ratio",
        "growthbook_many_ratio", "remote_ratio",
    )}  # fmt: skip
    with scratch_database() as url, tempfile.TemporaryDirectory() as spool:
        store = SqlStore.from_url(url)
        service = ExperimentService(store, SystemClock())
        for i in range(EXPERIMENTS):
            service.apply(experiment_from_dict(experiment_doc(i)), actor="bench", start=True)
        server = abkit_process(
            ["grpc", "--address", "127.0.0.1:0"],
            {"ABKIT_DATABASE_URL": url, "ABKIT_SPOOL_DIR": spool},
        )
        assert server.stdout is not None
        line = server.stdout.readline()
        if "listening" not in line:
            raise SystemExit(f"abkit grpc did not start: {line}{server.communicate()[1]}")
        address = f"127.0.0.1:{line.split('(port ', 1)[1].split(',')[0].strip().rstrip(')')}"
        engine = store.engine
        try:
            # ``client`` sends in the background as it would in a serving process; ``quiet``
            # sends only when flushed, so its figures are the call and the enqueue alone.
            client = LocalClient(address, max_queued=10_000_000)
            quiet = LocalClient(address, max_queued=10_000_000, flush_interval=3600)
            for c in (client, quiet):
                if not c.wait_ready(60) or c.status().experiments != EXPERIMENTS:
                    raise SystemExit(f"the client did not get the config: {c.status()}")
            for r in range(ROUNDS):
                time.sleep(SETTLE_SECONDS)  # the last round's writes and checks are over
                one_us, one_in = local_one(quiet, f"r{r}-one")
                sent_us, sent_in = local_one(client, f"r{r}-sent")
                send(client, quiet)
                gb_one = growthbook(f"r{r}-gb-one", 1, ONE_UNITS)
                time.sleep(SETTLE_SECONDS)
                many_us, many_in = local_many(quiet, f"r{r}-many")
                send(client, quiet)
                gb_many = growthbook(f"r{r}-gb-many", MANY, MANY_UNITS)
                calls, remote_in = remote(address, f"r{r}-remote")
                counts = tuple(stored(engine, f"r{r}-{k}") for k in ("one", "sent", "many"))
                time.sleep(0.5)  # the server's own journal drains every 200 ms
                remote_stored = stored(engine, f"r{r}-remote")
                if counts != (one_in, sent_in, many_in) or remote_stored != remote_in:
                    raise SystemExit(
                        f"invalid run: stored {(*counts, remote_stored)}, "
                        f"expected {(one_in, sent_in, many_in, remote_in)}"
                    )
                local_calls = 1e6 / one_us
                row = {
                    "round": r + 1,
                    "local_one_us": round(one_us, 3),
                    "local_one_sending_us": round(sent_us, 3),
                    "local_many_us": round(many_us, 2),
                    "local_many_us_per_assignment": round(many_us / MANY, 3),
                    "growthbook_one_us": round(gb_one, 2),
                    "growthbook_many_us": round(gb_many, 1),
                    "growthbook_one_ratio": round(gb_one / one_us, 2),
                    "growthbook_many_ratio": round(gb_many / many_us, 2),
                    "remote_calls_per_s": round(calls),
                    "local_calls_per_s": round(local_calls),
                    "remote_ratio": round(local_calls / calls, 1),
                    "exposures_verified": sum(counts) + remote_stored,
                }
                print(json.dumps(row), flush=True)
                for key in results:
                    results[key].append(float(row[key]))
            client.close()
            quiet.close()
            experiments, megabytes = memory(address)
        finally:
            server.send_signal(signal.SIGTERM)
            server.communicate(timeout=60)
            store.close()
    propagation = []
    for run in range(3):
        with scratch_database() as url, tempfile.TemporaryDirectory() as spool:
            delays = _propagation(url, Path(spool) / "spool")
            p99 = delays[int(0.99 * (len(delays) - 1))]
            row = {
                "propagation_run": run + 1,
                "clients": len(delays),
                "p50_s": round(delays[len(delays) // 2], 3),
                "p99_s": round(p99, 3),
                "max_s": round(delays[-1], 3),
            }
            print(json.dumps(row), flush=True)
            propagation.append(p99)
    median = {k: statistics.median(v) for k, v in results.items()}
    summary = {
        **{k: round(v, 3) for k, v in median.items()},
        "local_many_us_per_assignment": round(median["local_many_us"] / MANY, 3),
        "memory_mb_1000_experiments": megabytes,
        "memory_experiments": experiments,
        "propagation_p99_s": round(statistics.median(propagation), 3),
    }
    print(json.dumps(summary))
    print(
        f"LocalClient.assign {median['local_one_us']:.2f} us/call (goal <= {GOAL_US}); "
        f"{median['local_one_sending_us']:.2f} us with its sender running; "
        f"{summary['local_many_us_per_assignment']:.2f} us per assignment of 50; "
        f"{median['growthbook_one_ratio']:.1f}x / {median['growthbook_many_ratio']:.1f}x "
        f"GrowthBook (goal >= {GOAL_GROWTHBOOK}x); {median['remote_ratio']:.0f}x the calls/s of "
        f"gRPC Assign through Client; {megabytes} MB with {experiments} experiments; "
        f"propagation p99 {summary['propagation_p99_s']} s (goal <= {GOAL_PROPAGATION_S})"
    )


if __name__ == "__main__":
    os.environ.setdefault("ABKIT_LOG_LEVEL", "WARNING")
    main()
