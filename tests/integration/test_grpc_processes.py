"""``abkit grpc --processes N``: N real server processes on one port, one supervisor.

Everything here runs the real command as a subprocess against the test PostgreSQL database and
talks to it over real gRPC channels.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from abkit.config import Settings
from abkit.core.model import Exposure
from abkit.core.rows import RowKind, encode_exposures
from abkit.core.spec import experiment_from_dict
from abkit.infra.clock import SystemClock
from abkit.infra.journal import Journal
from abkit.rpc.processes import orphan_journals, process_spool
from abkit.runtime import Runtime
from abkit.services.experiments import ExperimentService
from abkit.store.memory import MemoryStore
from abkit.store.sql import SqlStore
from abkit.v1 import assignment_pb2 as pb
from abkit.v1 import assignment_pb2_grpc as pb_grpc
from tests.helpers import EXPERIMENT
from tests.serving import children as _children
from tests.serving import established as _established

ROOT = Path(__file__).parents[2]


def _start(
    url: str, spool: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "abkit", "grpc", "--address", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={
            **os.environ,
            "ABKIT_DATABASE_URL": url,
            "ABKIT_SPOOL_DIR": str(spool),
            **(env or {}),
        },
    )


def _port(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening" in line, proc.communicate(timeout=30)
    return int(line.split("(port ", 1)[1].split(",")[0].rstrip(")\n"))


@pytest.fixture
def experiment(pg_url: str) -> str:
    store = SqlStore.from_url(pg_url)
    ExperimentService(store, SystemClock()).apply(
        experiment_from_dict(EXPERIMENT), actor="t", start=True
    )
    store.close()
    return pg_url


def test_processes_share_the_port_and_stop_together(experiment: str, tmp_path: Path) -> None:
    proc = _start(experiment, tmp_path / "spool", "--processes", "2")
    port = _port(proc)
    children = _children(proc.pid)
    assert len(children) == 2
    # Separate connections (no shared subchannel pool), so the kernel can spread them.
    channels = [
        grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(16)
    ]
    units = []
    try:
        for n, channel in enumerate(channels):
            stub = pb_grpc.AssignmentServiceStub(channel)
            batch = [f"mp-{n}-{i}" for i in range(25)]
            reply = stub.AssignBatch(
                pb.AssignBatchRequest(requests=[pb.AssignRequest(unit_id=u) for u in batch]),
                timeout=10,
                wait_for_ready=True,
            )
            assert all(r.assignments[0].in_experiment for r in reply.responses)
            units += batch
        # Both processes hold accepted connections: each serves part of the load (16
        # connections all hashed to one process: probability 2**-15).
        per_process = [_established(child, port) for child in children]
        assert sum(per_process) == 16 and min(per_process) >= 1, per_process
    finally:
        for channel in channels:
            channel.close()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert not any(Path(f"/proc/{child}").exists() for child in children)
    store = SqlStore.from_url(experiment)
    with store.transaction() as tx:
        missing = [u for u in units if tx.exposures.get("ranker-v2", u) is None]
    store.close()
    assert missing == []  # each process's writer flushed on the way out


def test_a_process_that_dies_stops_the_server(experiment: str, tmp_path: Path) -> None:
    proc = _start(experiment, tmp_path / "spool", "--processes", "2")
    _port(proc)
    first, second = _children(proc.pid)
    os.kill(second, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "gRPC process 1" in err and "stopping the others" in err
    assert not Path(f"/proc/{first}").exists()


def test_processes_stop_when_the_supervisor_is_killed(experiment: str, tmp_path: Path) -> None:
    proc = _start(experiment, tmp_path / "spool", "--processes", "2")
    _port(proc)
    children = _children(proc.pid)
    proc.kill()  # SIGKILL: nothing is relayed
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(child) for child in children):
        time.sleep(0.1)
    assert not any(_alive(child) for child in children)


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for the (dead) supervisor's reaper."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--processes", "0"], {}, "--processes"),
        (["--processes", "65"], {}, "--processes"),
        ([], {"ABKIT_GRPC_PROCESSES": "two"}, "ABKIT_GRPC_PROCESSES"),
        ([], {"ABKIT_GRPC_PROCESSES": "0"}, "ABKIT_GRPC_PROCESSES"),
        (["--processes", "2"], {"ABKIT_METRICS_PORT": "9464"}, "ABKIT_METRICS_PORT"),
    ],
)
def test_bad_process_settings_are_refused_by_name(
    experiment: str, tmp_path: Path, args: list[str], env: dict[str, str], named: str
) -> None:
    proc = _start(experiment, tmp_path / "spool", *args, env=env)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, (out, err)
    assert named in err and "listening" not in out


def test_a_process_that_fails_to_start_fails_the_server_with_its_exit_code(
    experiment: str, tmp_path: Path
) -> None:
    # The supervisor does not read the certificate; each process does, and refuses to start.
    missing = str(tmp_path / "missing.pem")
    proc = _start(
        experiment,
        tmp_path / "spool",
        "--processes",
        "2",
        env={"ABKIT_TLS_CERT": missing, "ABKIT_TLS_KEY": missing},
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, (out, err)  # a configuration error, as without --processes
    assert "ABKIT_TLS_CERT" in err and "before listening" in err and "listening on" not in out


def _exposure(unit: str) -> Exposure:
    return Exposure("ranker-v2", unit, "control", "ranker:1", "c" * 16, datetime.now(UTC))


def _journal(path: Path, *units: str) -> Journal:
    """A journal at ``path`` holding one record of these units' exposures (left open)."""
    journal = Journal(path)
    journal.open()
    rows = [_exposure(u) for u in units]
    assert journal.append(RowKind.EXPOSURES, encode_exposures(rows).encode(), len(rows)).wait(5)
    return journal


def _leave(journal: Journal) -> None:
    journal.close()
    journal.release()


def test_journals_of_processes_that_no_longer_exist_are_drained(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    assert process_spool(str(root), 0) == str(root)
    for index in (1, 2, 3):
        _leave(_journal(Path(process_spool(str(root), index)), f"p{index}-a", f"p{index}-b"))
    live = Journal(root / "process-3")  # a live process still holds index 3
    live.open()
    orphans = orphan_journals(str(root), 2)  # now 2 processes: index 1 is still in use
    assert orphans == [str(root / "process-2"), str(root / "process-3")]
    store = MemoryStore()
    runtime = Runtime(Settings(spool_dir=str(root)), store)
    try:
        runtime.start()
        runtime.adopt_journals(orphans)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with store.transaction() as tx:
                if tx.exposures.counts("ranker-v2").get("control") == 2:
                    break
            time.sleep(0.05)
    finally:
        assert runtime.close(10)
        _leave(live)
    with store.transaction() as tx:
        assert tx.exposures.get("ranker-v2", "p2-a") and tx.exposures.get("ranker-v2", "p2-b")
        assert not tx.exposures.get("ranker-v2", "p1-a")  # a current index: its own process's
        assert not tx.exposures.get("ranker-v2", "p3-a")  # held by a live process: left alone
    reopened = Journal(root / "process-2")
    reopened.open()
    assert reopened.stats().backlog_rows == 0  # drained and checkpointed
    _leave(reopened)


def test_a_single_process_server_drains_what_process_1_left(
    experiment: str, tmp_path: Path
) -> None:
    root = tmp_path / "spool"
    _leave(_journal(root / "process-1", "left-behind-1", "left-behind-2"))
    proc = _start(experiment, root, env={"ABKIT_WRITER_FLUSH_SECONDS": "0.05"})
    _port(proc)
    store = SqlStore.from_url(experiment)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with store.transaction() as tx:
                if all(
                    tx.exposures.get("ranker-v2", u) for u in ("left-behind-1", "left-behind-2")
                ):
                    break
            time.sleep(0.1)
        else:
            pytest.fail("the orphaned journal was not drained")
    finally:
        store.close()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0
    reopened = Journal(root / "process-1")
    reopened.open()
    assert reopened.stats().backlog_rows == 0
    _leave(reopened)
