"""Real ``abkit`` server processes under load, for the tests that kill things."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from abkit.core.spec import experiment_from_dict
from abkit.infra.clock import SystemClock
from abkit.ports import Store
from abkit.services.experiments import ExperimentService
from abkit.v1 import assignment_pb2 as pb
from abkit.v1 import assignment_pb2_grpc as pb_grpc
from tests.helpers import EXPERIMENT

ROOT = Path(__file__).parents[1]
KEY = EXPERIMENT["key"]


def start_experiment(store: Store) -> None:
    ExperimentService(store, SystemClock()).apply(
        experiment_from_dict(EXPERIMENT), actor="t", start=True
    )


class AbkitProcess(subprocess.Popen[str]):
    """``python -m abkit ...`` with its stderr in a file: a pipe nobody reads while the
    process runs fills up and blocks its logging threads. :meth:`communicate` returns it."""

    def __init__(self, args: Sequence[str], env: dict[str, str], stdout: int | None) -> None:
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 -- the process writes it
            "w+", prefix="abkit-", suffix=".log", delete=False
        )
        super().__init__(
            [sys.executable, "-m", "abkit", *args],
            stdout=stdout,
            stderr=self.log,
            text=True,
            env={**os.environ, **env},
            cwd=ROOT,
        )

    def communicate(  # type: ignore[override]
        self, input: str | None = None, timeout: float | None = None
    ) -> tuple[str, str]:
        out, _ = super().communicate(input, timeout)
        self.log.close()
        return out or "", Path(self.log.name).read_text(errors="replace")


def abkit_process(
    args: Sequence[str], env: dict[str, str], *, stdout: int | None = subprocess.PIPE
) -> AbkitProcess:
    return AbkitProcess(args, env, stdout)


def serve(
    url: str, spool: Path, extra_env: dict[str, str] | None = None
) -> tuple[AbkitProcess, int]:
    """``abkit grpc`` on a free port; the process and its port."""
    env = {
        "ABKIT_DATABASE_URL": url,
        "ABKIT_SPOOL_DIR": str(spool),
        "ABKIT_WRITER_FLUSH_SECONDS": "2",
        **(extra_env or {}),
    }
    proc = abkit_process(["grpc", "--address", "127.0.0.1:0"], env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "port " not in line:
        proc.kill()
        raise AssertionError(f"abkit grpc did not start: {line}{proc.communicate()[1]}")
    return proc, int(line.rsplit("port ", 1)[1].split(")")[0].split(",")[0])


class Load:
    """``lanes`` callers, each a new unit per call: Assign, then Track -- until :meth:`stop`
    or the server goes away. ``exposed`` holds the units whose answer said ``in_experiment``,
    ``tracked`` the event ids whose Track answered OK: everything the server acknowledged, in
    each lane's order."""

    def __init__(self, port: int, lanes: int = 8, prefix: str = "k", track: bool = True) -> None:
        self._track = track
        self.exposed: list[str] = []
        self.tracked: list[str] = []
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._load, args=(port, f"{prefix}{n}"), daemon=True)
            for n in range(lanes)
        ]
        for t in self._threads:
            t.start()

    def _load(self, port: int, lane: str) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.AssignmentServiceStub(channel)
            i = 0
            while not self._stop.is_set():
                unit = f"{lane}-{i}"
                i += 1
                try:
                    reply = stub.Assign(pb.AssignRequest(unit_id=unit), timeout=10)
                    if reply.assignments[0].in_experiment:
                        with self._lock:
                            self.exposed.append(unit)
                    if not self._track:
                        continue
                    stub.Track(
                        pb.TrackRequest(unit_id=unit, metric="conversion", event_id=f"e-{unit}"),
                        timeout=10,
                    )
                    with self._lock:
                        self.tracked.append(f"e-{unit}")
                except grpc.RpcError as exc:
                    with self._lock:
                        self.failures.append(f"{exc.code().name}: {exc.details()}")
                    return  # the server is gone: nothing after this was acknowledged

    def stop(self) -> tuple[list[str], list[str]]:
        """Stop calling; what was acknowledged."""
        self._stop.set()
        for t in self._threads:
            t.join(30)
        with self._lock:
            return list(self.exposed), list(self.tracked)


def load_until_killed(port: int, seconds: float, lanes: int = 8, track: bool = True) -> Load:
    load = Load(port, lanes, track=track)
    time.sleep(seconds)
    return load


def missing_rows(
    store: Store, exposures: Sequence[str], events: Sequence[str], timeout: float = 60.0
) -> tuple[list[str], list[str]]:
    """The acknowledged exposures (units) and events (ids) not in the store once ``timeout``
    has passed or all arrived."""
    deadline = time.monotonic() + timeout
    while True:
        with store.transaction() as tx:
            missing = (
                [u for u in exposures if tx.exposures.get(KEY, u) is None],
                [e for e in events if tx.events.get(e) is None],
            )
        if missing == ([], []) or time.monotonic() > deadline:
            return missing
        time.sleep(0.5)


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def established(pid: int, port: int) -> int:
    """Connections to ``port`` that process ``pid`` has accepted (from /proc, no tools)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count
