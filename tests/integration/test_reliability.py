"""Nothing lost when PostgreSQL goes away or the process is stopped; replicas never duplicate.

The outage test runs its own PostgreSQL cluster (initdb/pg_ctl in a temporary directory on a
free port) so it can stop it: the shared server is never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider

from abkit.config import Settings
from abkit.core.spec import experiment_from_dict
from abkit.infra.telemetry import Telemetry
from abkit.rpc.server import build_server
from abkit.runtime import Runtime
from abkit.store import migrate
from abkit.store.engine import create_store_engine
from abkit.store.sql import SqlStore
from abkit.v1 import assignment_pb2 as pb
from abkit.v1 import assignment_pb2_grpc as pb_grpc
from tests.helpers import EXPERIMENT
from tests.serving import load_until_killed, missing_rows, serve, start_experiment

ROOT = Path(__file__).parents[2]
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_tool(name: str) -> str:
    found = shutil.which(name) or (str(PG_BIN / name) if (PG_BIN / name).exists() else None)
    if found is None:
        message = f"{name} is not installed; the outage test needs its own PostgreSQL cluster"
        if os.environ.get("ABKIT_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


class Cluster:
    """A throwaway PostgreSQL cluster that a test may stop and start."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="abkit-pg-"))
        self.port = free_port()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(
            _pg_tool("initdb"),
            "-D",
            str(self.dir / "data"),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        )
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            _pg_tool("pg_ctl"),
            "-D",
            str(self.dir / "data"),
            "-o",
            options,
            "-l",
            str(self.dir / "log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        self._run(_pg_tool("pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    c.start()
    engine = create_store_engine(c.url)
    migrate.upgrade(engine)
    engine.dispose()
    yield c
    c.destroy()


def test_postgres_outage_loses_nothing_and_duplicates_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=cluster.url,
        writer_flush_seconds=0.05,
        writer_batch_size=200,
        config_refresh_seconds=0.2,
        spool_dir=str(tmp_path / "spool"),
    )
    runtime = Runtime(
        settings,
        SqlStore.from_url(cluster.url, pool_timeout=2, connect_args={"connect_timeout": 2}),
    )
    runtime.experiments.apply(experiment_from_dict(EXPERIMENT), actor="t", start=True)
    runtime.start()
    server = build_server(settings, runtime, Telemetry(TracerProvider()), address="127.0.0.1:0")
    server.start()
    exposed: set[str] = set()
    tracked: set[str] = set()
    unanswered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load(lane: int) -> None:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssignmentServiceStub(channel)
            i = 0
            while not stop.is_set():
                unit = f"l{lane}-u{i}"
                try:
                    reply = stub.Assign(pb.AssignRequest(unit_id=unit), timeout=5)
                    stub.Track(
                        pb.TrackRequest(unit_id=unit, metric="conversion", event_id=f"e-{unit}"),
                        timeout=5,
                    )
                except grpc.RpcError as exc:
                    with lock:
                        unanswered.append(f"{unit}: {exc.code()}")
                else:
                    with lock:
                        if reply.assignments[0].in_experiment:
                            exposed.add(unit)
                        tracked.add(f"e-{unit}")
                i += 1

    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.address))
    lanes = [threading.Thread(target=load, args=(n,), daemon=True) for n in range(4)]
    for t in lanes:
        t.start()
    time.sleep(2)
    cluster.stop()  # PostgreSQL goes away for several seconds, under load
    time.sleep(2)
    degraded = health.Check(
        health_pb2.HealthCheckRequest(service="abkit.v1.Store"), timeout=5
    ).status
    served_while_down = health.Check(
        health_pb2.HealthCheckRequest(service="abkit.v1.AssignmentService"), timeout=5
    ).status
    kept_while_down = runtime.ingest.journal.stats().backlog_rows
    time.sleep(2)
    cluster.start()
    time.sleep(2)
    stop.set()
    for t in lanes:
        t.join()
    assert runtime.flush(60), (runtime.ingest.journal.stats(), runtime.ingest.drain.stats())
    server.stop(grace=2)
    assert runtime.close(30)

    assert unanswered == []  # every Assign (and Track) was answered, outage or not
    assert degraded == health_pb2.HealthCheckResponse.NOT_SERVING
    assert served_while_down == health_pb2.HealthCheckResponse.SERVING
    assert kept_while_down > 0  # the store was away: rows waited in the journal
    engine = create_store_engine(cluster.url)
    with engine.connect() as conn:
        stored_units = [r[0] for r in conn.execute(sa.text("SELECT unit_id FROM exposures"))]
        stored_events = [r[0] for r in conn.execute(sa.text("SELECT event_id FROM events"))]
    engine.dispose()
    assert len(exposed) > 500 and len(tracked) > 500
    # Every answered exposure and event is stored (0 lost) and nothing else is (no row invented
    # by a replay); duplicates cannot exist at all, the primary keys refuse them.
    assert sorted(stored_units) == sorted(exposed)
    assert sorted(stored_events) == sorted(tracked)


def test_sigterm_under_load_exits_zero_and_keeps_everything_acknowledged(
    pg_url: str, tmp_path: Path
) -> None:
    store = SqlStore.from_url(pg_url)
    from abkit.infra.clock import SystemClock
    from abkit.services.experiments import ExperimentService

    ExperimentService(store, SystemClock()).apply(
        experiment_from_dict(EXPERIMENT), actor="t", start=True
    )
    proc, port = serve(pg_url, tmp_path / "spool")
    acknowledged: list[str] = []
    exposed: list[str] = []
    lock = threading.Lock()

    def load(lane: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.AssignmentServiceStub(channel)
            for i in range(100_000):
                unit = f"s{lane}-{i}"
                try:
                    reply = stub.Assign(
                        pb.AssignRequest(unit_id=unit), timeout=5, wait_for_ready=i == 0
                    )
                    stub.Track(
                        pb.TrackRequest(unit_id=unit, metric="conversion", event_id=f"t-{unit}"),
                        timeout=5,
                    )
                except grpc.RpcError:
                    return  # the server is going away: calls after this were never acknowledged
                with lock:
                    acknowledged.append(f"t-{unit}")
                    if reply.assignments[0].in_experiment:
                        exposed.append(unit)

    lanes = [threading.Thread(target=load, args=(n,), daemon=True) for n in range(4)]
    for t in lanes:
        t.start()
    time.sleep(2.5)
    proc.send_signal(signal.SIGTERM)  # the drain leaves up to 2 s of rows in the journal now
    for t in lanes:
        t.join()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    with store.transaction() as tx:
        missing = [e for e in acknowledged if tx.events.get(e) is None]
        missing_exposures = [u for u in exposed if tx.exposures.get("ranker-v2", u) is None]
    store.close()
    assert len(acknowledged) > 100
    assert missing == [] and missing_exposures == []


def test_three_replicas_write_one_first_exposure_per_unit(pg_url: str, tmp_path: Path) -> None:
    store = SqlStore.from_url(pg_url)
    from abkit.infra.clock import SystemClock
    from abkit.services.experiments import ExperimentService

    ExperimentService(store, SystemClock()).apply(
        experiment_from_dict(EXPERIMENT), actor="t", start=True
    )
    replicas = [
        serve(pg_url, tmp_path / f"spool{i}", {"ABKIT_WRITER_FLUSH_SECONDS": "0.05"})
        for i in range(3)
    ]
    units = [f"shared-{i}" for i in range(600)]
    answers: dict[str, set[str]] = {u: set() for u in units}
    lock = threading.Lock()

    def hammer(port: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.AssignmentServiceStub(channel)
            batch = pb.AssignBatchRequest(requests=[pb.AssignRequest(unit_id=u) for u in units])
            for _ in range(3):
                reply = stub.AssignBatch(batch, timeout=30, wait_for_ready=True)
                with lock:
                    for u, r in zip(units, reply.responses, strict=True):
                        answers[u].add(r.assignments[0].arm_key)

    threads = [
        threading.Thread(target=hammer, args=(port,)) for _, port in replicas for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for proc, _ in replicas:
        proc.send_signal(signal.SIGTERM)
    for proc, _ in replicas:
        proc.communicate(timeout=60)
        assert proc.returncode == 0
    engine = create_store_engine(pg_url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT unit_id, arm_key FROM exposures WHERE experiment_key = 'ranker-v2'")
        ).all()
    engine.dispose()
    store.close()
    assert all(len(arms) == 1 for arms in answers.values())  # every replica gives the same arm
    # ...and the one exposure stored per unit (the primary key allows no other) says that arm,
    # whichever replica's write won.
    assert {u: arm for u, arm in rows} == {u: next(iter(arms)) for u, arms in answers.items()}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_kill_9_under_load_loses_nothing_acknowledged(
    backend: str, sqlite_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Direct mode: every acknowledged exposure and event is in the journal before its answer,
    so a SIGKILL loses none of them; the restarted server drains the journal into the store."""
    url = sqlite_url if backend == "sqlite" else str(request.getfixturevalue("pg_url"))
    store = SqlStore.from_url(url)
    start_experiment(store)
    spool = tmp_path / "journal"
    proc, port = serve(url, spool)
    load = load_until_killed(port, seconds=5.0)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    exposed, tracked = load.stop()
    restarted, _ = serve(url, spool, {"ABKIT_WRITER_FLUSH_SECONDS": "0.05"})
    missing = missing_rows(store, exposed, tracked)
    restarted.send_signal(signal.SIGTERM)
    _, err = restarted.communicate(timeout=60)
    store.close()
    assert restarted.returncode == 0, err
    assert len(exposed) > 500 and len(tracked) > 500
    assert missing == ([], [])
