"""abkit.client.LocalClient against real servers: streamed config, local answers equal to the
server's, exposures and events sent in the background, outages, hostile config on the wire."""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import text

from abkit.client import Client, LocalClient
from abkit.config import Settings
from abkit.core.model import ExperimentStatus, Reason
from abkit.core.spec import experiment_from_dict
from abkit.infra.telemetry import Telemetry
from abkit.rpc import config_wire
from abkit.rpc.server import GrpcServer, build_server
from abkit.runtime import Runtime
from abkit.store.sql import SqlStore
from abkit.v1 import assignment_pb2 as pb
from abkit.v1 import assignment_pb2_grpc as pb_grpc
from tests.helpers import EXPERIMENT
from tests.serving import ROOT, abkit_process, children, established

KEY = EXPERIMENT["key"]
VECTORS = json.loads((ROOT / "tests" / "fixtures" / "hash_vectors.json").read_text())


def _serve(url: str, **settings: Any) -> tuple[GrpcServer, Runtime]:
    defaults: dict[str, Any] = {
        "writer_flush_seconds": 0.02,
        "config_refresh_seconds": 0.05,
        "config_heartbeat_seconds": 0.5,
    }
    config = Settings(database_url=url, **(defaults | settings))
    runtime = Runtime(config, SqlStore.from_url(url))
    runtime.start()
    server = build_server(config, runtime, Telemetry(TracerProvider()), address="127.0.0.1:0")
    server.start()
    return server, runtime


@pytest.fixture
def served(sqlite_url: str) -> Iterator[tuple[GrpcServer, Runtime]]:
    server, runtime = _serve(sqlite_url)
    runtime.experiments.apply(experiment_from_dict(EXPERIMENT), actor="t", start=True)
    runtime.config.refresh()  # in service before any client connects
    yield server, runtime
    server.stop(grace=1)
    runtime.close()


def _wait(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _exposures(store: SqlStore, key: str = KEY) -> dict[str, Any]:
    query = text("SELECT unit_id, arm_key, trace_id FROM exposures WHERE experiment_key = :key")
    with store.engine.connect() as conn:
        return {row.unit_id: row for row in conn.execute(query, {"key": key})}


def _stored(runtime: Runtime, key: str = KEY) -> dict[str, Any]:
    assert runtime.flush(10)
    assert isinstance(runtime.store, SqlStore)
    return _exposures(runtime.store, key)


# -- answers ---------------------------------------------------------------------------------------


def test_assigns_like_the_server_and_sends_exposures_with_the_callers_trace(
    served: tuple[GrpcServer, Runtime],
) -> None:
    server, runtime = served
    tracer = TracerProvider().get_tracer("caller")
    with LocalClient(server.address) as local, Client(server.address, timeout=5) as remote:
        assert local.wait_ready(10)
        units = [f"user-{i}" for i in range(200)]
        with tracer.start_as_current_span("request") as span:
            answers = [local.assign(u, KEY, default="ranker-v1") for u in units]
        untraced = [f"untraced-{i}" for i in range(20)]  # no span, no context at all
        assert all(local.assign(u, KEY, default="x").in_experiment for u in untraced)
        assert local.flush(10)
        assert local.status().exposures_sent == 220
        assert [remote.assign(u, KEY, default="x") for u in units] == answers
        assert {a.reason for a in answers} == {Reason.SPLIT}
        assert {a.model_version for a in answers} == {"ranker-v1", "ranker-v2"}
    stored = _stored(runtime)
    assert set(stored) == set(units) | set(untraced)
    assert {stored[u].trace_id for u in untraced} == {""}
    trace_id = f"{span.get_span_context().trace_id:032x}"
    for unit, answer in zip(units, answers, strict=True):
        # The local client's exposure is stored (the remote client's Assign is a duplicate).
        assert stored[unit].arm_key == answer.arm_key
        assert stored[unit].trace_id == trace_id


def test_an_exposure_is_sent_once_per_unit_and_experiment(
    served: tuple[GrpcServer, Runtime],
) -> None:
    server, runtime = served
    with LocalClient(server.address) as local:
        assert local.wait_ready(10)
        for _ in range(5):
            for i in range(50):
                local.assign(f"user-{i}", KEY, default="ranker-v1")
        assert local.flush(10)
        assert local.status().exposures_sent == 50
    assert len(_stored(runtime)) == 50


def test_an_exposure_remembered_by_assign_many_is_sent_even_when_a_later_key_fails(
    served: tuple[GrpcServer, Runtime],
) -> None:
    server, runtime = served
    doc = dict(EXPERIMENT, key="targeted", targeting={"attr": "platform", "in": ["ios"]})
    runtime.experiments.apply(experiment_from_dict(doc), actor="t", start=True)
    runtime.config.refresh()

    class Failing(dict):  # type: ignore[type-arg]
        """Plain to look at; its lookup (the targeting's) fails."""

        def get(self, *args: Any) -> Any:
            raise RuntimeError("lookup failed")

    with LocalClient(server.address) as local:
        _wait(lambda: local.status().experiments == 2)
        answers = local.assign_many(
            "user-1", {KEY: "a", "targeted": "b"}, attributes=Failing(platform="ios")
        )
        assert {a.reason for a in answers.values()} == {Reason.ERROR}
        # KEY's answer was randomized and remembered before "targeted" failed: it is sent.
        assert local.flush(10) and local.status().exposures_sent == 1
    assert set(_stored(runtime)) == {"user-1"}


def test_attributes_are_seen_as_the_server_sees_them(served: tuple[GrpcServer, Runtime]) -> None:
    """An enum (a str or int subclass) crosses the wire as a plain string or number; an integer
    no double can hold cannot cross it: the local answer is the remote one."""
    server, runtime = served
    doc = dict(EXPERIMENT, key="targeted", targeting={"attr": "platform", "in": ["ios"]})
    runtime.experiments.apply(experiment_from_dict(doc), actor="t", start=True)
    runtime.config.refresh()

    class Platform(enum.StrEnum):
        IOS = "ios"

    class Level(enum.IntEnum):
        GOLD = 3

    with LocalClient(server.address) as local, Client(server.address, timeout=5) as remote:
        _wait(lambda: local.status().experiments == 2)
        for attributes in (
            {"platform": Platform.IOS},
            {"platform": "ios", "level": Level.GOLD},
            {"platform": "ios", "n": 10**400},
            {"platform": "ios", "n": 2**60},
        ):
            mine = local.assign("user-1", "targeted", default="x", attributes=attributes)
            theirs = remote.assign("user-1", "targeted", default="x", attributes=attributes)
            assert (mine.model_version, mine.reason) == (theirs.model_version, theirs.reason)
        assert mine.reason is Reason.SPLIT
        # 2**53 + 1 crosses the wire as the double 2**53: not greater than 2**53 for either.
        doc = dict(EXPERIMENT, key="big", targeting={"attr": "n", "gt": 2**53})
        runtime.experiments.apply(experiment_from_dict(doc), actor="t", start=True)
        runtime.config.refresh()
        _wait(lambda: local.status().experiments == 3)
        mine = local.assign("user-1", "big", default="x", attributes={"n": 2**53 + 1})
        theirs = remote.assign("user-1", "big", default="x", attributes={"n": 2**53 + 1})
        assert mine.reason is theirs.reason is Reason.TARGETING_MISS


def test_a_second_close_says_what_the_first_did(served: tuple[GrpcServer, Runtime]) -> None:
    server, _ = served
    local = LocalClient(server.address)
    assert local.wait_ready(10)
    assert local.close() is True
    assert local.close() is True


def test_errors_serve_the_default_and_never_raise(served: tuple[GrpcServer, Runtime]) -> None:
    server, _ = served
    with LocalClient(server.address) as local:
        assert local.wait_ready(10)
        for unit, key, attributes, why in [
            ("user-1", "missing", None, "not in the config"),
            ("", KEY, None, "unit_id"),
            ("x" * 300, KEY, None, "unit_id"),
            ("user-1", KEY, {"n": float("nan")}, "finite"),
            (None, KEY, None, "unit_id"),
        ]:
            answer = local.assign(unit, key, default="ranker-v1", attributes=attributes)  # type: ignore[arg-type]
            assert answer.reason is Reason.ERROR and answer.model_version == "ranker-v1"
            assert answer.error is not None and why in answer.error
        assert not local.track("user-1", "Bad Metric")
        assert not local.track("user-1", "conversion", float("inf"))
    closed = local.assign("user-1", KEY, default="ranker-v1")
    assert closed.reason is Reason.ERROR and "closed" in (closed.error or "")


def test_no_server_at_start_serves_the_default_with_reason_error() -> None:
    with socket_port() as port, LocalClient(f"127.0.0.1:{port}") as local:
        answer = local.assign("user-1", KEY, default="ranker-v1")
        assert answer.reason is Reason.ERROR and answer.model_version == "ranker-v1"
        assert "no experiment config yet" in (answer.error or "")
        status = local.status()
        assert status.stale and status.config_age_seconds is None and not status.connected


class socket_port:
    """A port nothing listens on (bound and closed)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        return None


def test_usable_from_asyncio_without_blocking_the_loop(served: tuple[GrpcServer, Runtime]) -> None:
    server, runtime = served

    async def main() -> tuple[str, float, bool]:
        local = LocalClient(server.address)
        await asyncio.to_thread(local.wait_ready, 10)
        answer = local.assign("async-user", KEY, default="ranker-v1")
        assert local.track("async-user", "conversion")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        started = time.monotonic()
        closed = await local.aclose()
        task.cancel()
        return answer.reason.value, time.monotonic() - started, closed and ticks > 0

    reason, _, ok = asyncio.run(main())
    assert reason == "SPLIT" and ok
    assert "async-user" in _stored(runtime)
    with runtime.store.engine.connect() as conn:  # type: ignore[attr-defined]
        query = text("SELECT count(*) FROM events WHERE unit_id = 'async-user'")
        assert conn.execute(query).scalar() == 1


# -- parity ----------------------------------------------------------------------------------------

PARITY = [
    {"key": "layer-a", "layer": {"key": "ranking", "start": 0.0, "end": 0.5},
     "arms": [{"key": "control", "model_version": "a1", "weight": 0.5, "control": True},
              {"key": "treatment", "model_version": "a2", "weight": 0.5}]},
    {"key": "layer-b", "layer": {"key": "ranking", "start": 0.5, "end": 1.0},
     "arms": [{"key": "control", "model_version": "b1", "weight": 0.2, "control": True},
              {"key": "t1", "model_version": "b2", "weight": 0.3},
              {"key": "t2", "model_version": "b3", "weight": 0.5}]},
    {"key": "held", "holdout": {"key": "global", "fraction": 0.1},
     "targeting": {"attr": "country", "in": ["US", "CA"]},
     "overrides": {"unit-7": "treatment", "unit-70": "control"},
     "arms": [{"key": "control", "model_version": "h1", "weight": 0.5, "control": True},
              {"key": "treatment", "model_version": "h2", "weight": 0.5}]},
    {"key": "ramped", "coverage": 0.2, "salt": "ramp-salt",
     "arms": [{"key": "control", "model_version": "r1", "weight": 0.5, "control": True},
              {"key": "treatment", "model_version": "r2", "weight": 0.5}]},
    {"key": "done", "targeting": {"attr": "country", "in": ["US"]},
     "arms": [{"key": "control", "model_version": "d1", "weight": 0.5, "control": True},
              {"key": "treatment", "model_version": "d2", "weight": 0.5}]},
    {"key": "paused",
     "arms": [{"key": "control", "model_version": "p1", "weight": 0.5, "control": True},
              {"key": "treatment", "model_version": "p2", "weight": 0.5}]},
]  # fmt: skip
COUNTRIES = ("US", "CA", "FR", None)


def _attributes(i: int) -> dict[str, str]:
    country = COUNTRIES[i % len(COUNTRIES)]
    return {} if country is None else {"country": country}


def _remote_answers(
    stub: Any, units: list[str], keys: list[str]
) -> list[list[tuple[str, str, str, int, bool]]]:
    out = []
    for start in range(0, len(units), 1000):
        requests = [
            pb.AssignRequest(
                unit_id=u,
                experiment_keys=keys,
                attributes={
                    k: pb.AttributeValue(string_value=v) for k, v in _attributes(start + n).items()
                },
            )
            for n, u in enumerate(units[start : start + 1000])
        ]
        reply = stub.AssignBatch(pb.AssignBatchRequest(requests=requests), timeout=60)
        for r in reply.responses:
            out.append(
                [(a.experiment_key, a.arm_key, a.model_version, a.reason, a.in_experiment)
                 for a in r.assignments]
            )  # fmt: skip
    return out


def _local_answers(
    local: LocalClient, units: list[str], keys: list[str]
) -> list[list[tuple[str, str, str, int, bool]]]:
    reasons = {r: getattr(pb, f"REASON_{r.value}") for r in Reason}
    out = []
    defaults = dict.fromkeys(keys, "default")
    for i, u in enumerate(units):
        answers = local.assign_many(u, defaults, attributes=_attributes(i))
        out.append(
            [(a.experiment_key, a.arm_key, a.model_version, reasons[a.reason], a.in_experiment)
             for a in answers.values()]
        )  # fmt: skip
    return out


def test_parity_with_the_server_over_100k_units(sqlite_url: str) -> None:
    server, runtime = _serve(sqlite_url, exposure_durability="async")
    try:
        for doc in PARITY:
            runtime.experiments.apply(
                experiment_from_dict(doc), actor="t", start=doc["key"] != "paused"
            )
        runtime.decisions.promote("done", "treatment", actor="t")
        keys = [d["key"] for d in PARITY]
        units = [f"unit-{i}" for i in range(100_000)]
        checksums: list[str] = []
        with (
            LocalClient(server.address, on_config=checksums.append) as local,
            grpc.insecure_channel(server.address) as channel,
        ):
            stub = pb_grpc.AssignmentServiceStub(channel)
            _wait(lambda: local.status().experiments == len(PARITY))
            _wait(lambda: _concluded(local, "done"))
            remote = _remote_answers(stub, units, keys)
            assert _local_answers(local, units, keys) == remote
            reasons = {a[3] for answers in remote for a in answers}
            assert reasons >= {pb.REASON_SPLIT, pb.REASON_OVERRIDE, pb.REASON_HOLDOUT,
                               pb.REASON_NOT_IN_LAYER, pb.REASON_NOT_IN_COVERAGE,
                               pb.REASON_TARGETING_MISS, pb.REASON_CONCLUDED,
                               pb.REASON_EXPERIMENT_NOT_RUNNING}  # fmt: skip
            # Ramp coverage up: the stream brings the new config, answers still agree.
            ramped = dict(PARITY[3], coverage=0.6)
            seen = len(checksums)
            runtime.experiments.apply(experiment_from_dict(ramped), actor="t")
            _wait(lambda: len(checksums) > seen)
            sample = units[:20_000]
            assert _local_answers(local, sample, keys) == _remote_answers(stub, sample, keys)
    finally:
        server.stop(grace=1)
        runtime.close()


def _concluded(local: LocalClient, key: str) -> bool:
    answer = local.assign("probe", key, default="x", attributes={"country": "US"})
    return answer.reason is Reason.CONCLUDED


def test_hash_vectors_pass_through_the_client(sqlite_url: str) -> None:
    server, runtime = _serve(sqlite_url)
    try:
        for doc in VECTORS["experiments"]:
            runtime.experiments.apply(experiment_from_dict(doc), actor="t", start=True)
        with LocalClient(server.address) as local:
            _wait(lambda: local.status().experiments == len(VECTORS["experiments"]))
            for case in VECTORS["assignments"]:
                answer = local.assign(
                    case["unit_id"], case["experiment"], default="x", attributes=case["attributes"]
                )
                assert (answer.arm_key, answer.model_version, answer.reason.value) == (
                    case["arm_key"],
                    case["model_version"],
                    case["reason"],
                ), case
    finally:
        server.stop(grace=1)
        runtime.close()


# -- propagation: 200 clients, 2 server processes, the CLI's promote ----------------------------


def _propagation(url: str, spool: Path, clients: int = 200) -> list[float]:
    """Seconds from the promotion's commit (its audit time, stamped before the commit) until
    each client serves the rollout arm."""
    setup = SqlStore.from_url(url)
    setup_runtime = Runtime(Settings(database_url=url), setup)
    setup_runtime.experiments.apply(experiment_from_dict(EXPERIMENT), actor="t", start=True)
    env = {
        "ABKIT_DATABASE_URL": url,
        "ABKIT_SPOOL_DIR": str(spool),
        "ABKIT_CONFIG_STREAMS": "200",
        "ABKIT_CONFIG_REFRESH_SECONDS": "0.25",
    }
    proc = abkit_process(["grpc", "--address", "127.0.0.1:0", "--processes", "2"], env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening" in line, proc.communicate(timeout=30)
    port = int(line.split("(port ", 1)[1].split(",")[0].rstrip(")\n"))
    seen: dict[int, float] = {}
    lock = threading.Lock()
    local: list[LocalClient] = []
    try:

        def watcher(n: int) -> Callable[[str], None]:
            def on_config(checksum: str) -> None:
                if n < len(local) and _concluded(local[n], KEY):
                    with lock:
                        seen.setdefault(n, time.time())

            return on_config

        for n in range(clients):
            local.append(LocalClient(f"127.0.0.1:{port}", on_config=watcher(n)))
        for c in local:
            assert c.wait_ready(30)
        per_process = [established(pid, port) for pid in children(proc.pid)]
        assert len(per_process) == 2 and min(per_process) > 0 and sum(per_process) >= clients
        promote = abkit_process(
            ["experiment", "promote", KEY, "candidate", "--reason", "propagation"],
            {"ABKIT_DATABASE_URL": url},
        )
        _, err = promote.communicate(timeout=60)
        assert promote.returncode == 0, err
        _wait(lambda: len(seen) == clients, timeout=30)
        with setup.transaction() as tx:
            decided = next(d for d in tx.decisions.list(KEY) if d.action == "promote")
        committed = decided.decided_at.timestamp()
        return sorted(t - committed for t in seen.values())
    finally:
        with futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda c: c.close(1), local))
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        setup_runtime.close()


def test_a_promotion_reaches_200_clients_of_2_server_processes_within_a_second(
    sql_url: str, tmp_path: Path
) -> None:
    delays = _propagation(sql_url, tmp_path / "spool")
    p99 = delays[int(0.99 * (len(delays) - 1))]
    logging.getLogger(__name__).warning(
        "propagation to %d clients: p50 %.3f s, p99 %.3f s, max %.3f s",
        len(delays),
        delays[len(delays) // 2],
        p99,
        delays[-1],
    )
    assert delays[0] >= 0  # nobody saw it before the commit
    assert p99 <= 1.0


# -- outages -----------------------------------------------------------------------------------


def test_server_killed_and_restarted_clients_keep_serving_catch_up_and_lose_nothing(
    pg_url: str, tmp_path: Path
) -> None:
    store = SqlStore.from_url(pg_url)
    runtime = Runtime(Settings(database_url=pg_url), store)
    runtime.experiments.apply(experiment_from_dict(EXPERIMENT), actor="t", start=True)
    with socket_port() as port:
        pass
    env = {"ABKIT_DATABASE_URL": pg_url, "ABKIT_SPOOL_DIR": str(tmp_path / "spool")}
    address = f"127.0.0.1:{port}"

    def start() -> Any:
        proc = abkit_process(["grpc", "--address", address], env)
        assert proc.stdout is not None
        assert "listening" in proc.stdout.readline(), proc.communicate(timeout=30)
        return proc

    proc = start()
    local = LocalClient(address, timeout=2)
    try:
        assert local.wait_ready(30)
        before = [local.assign(f"before-{i}", KEY, default="ranker-v1") for i in range(500)]
        assert local.flush(10)
        proc.kill()
        proc.communicate(timeout=30)
        _wait(lambda: not local.status().connected)
        # Down: the last config is served, exposures queue up.
        during = [local.assign(f"during-{i}", KEY, default="ranker-v1") for i in range(500)]
        assert {a.reason for a in before + during} == {Reason.SPLIT}
        assert local.status().exposures_queued == 500
        assert local.status().stream_error
        runtime.experiments.pause(KEY, actor="t")  # changed while the server is away
        proc = start()
        _wait(lambda: local.assign("before-0", KEY, default="x").reason
              is Reason.EXPERIMENT_NOT_RUNNING, timeout=30)  # fmt: skip
        assert local.status().connected
    finally:
        assert local.close(30)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    status = local.status()
    assert status.exposures_dropped == 0 and status.exposures_sent == 1000
    stored = set(_exposures(store))
    assert stored == {f"before-{i}" for i in range(500)} | {f"during-{i}" for i in range(500)}
    runtime.close()


SIGTERM_SCRIPT = """
import sys, time
from abkit.client import LocalClient
client = LocalClient(sys.argv[1], flush_interval=3600)  # only an exit hook sends
assert client.wait_ready(30)
for i in range(300):
    client.assign(f"{sys.argv[2]}-{i}", "ranker-v2", default="ranker-v1")
client.track(f"{sys.argv[2]}-0", "conversion", event_id=f"{sys.argv[2]}-event")
print("queued", client.status().exposures_queued, flush=True)
if sys.argv[2] == "term":
    time.sleep(60)
"""


@pytest.mark.parametrize("how", ["term", "exit"])
def test_sigterm_and_interpreter_exit_flush_the_queues(
    served: tuple[GrpcServer, Runtime], how: str
) -> None:
    server, runtime = served
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SIGTERM_SCRIPT), server.address, how],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "queued 300", proc.communicate(timeout=30)
    if how == "term":
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (-signal.SIGTERM if how == "term" else 0), err
    stored = _stored(runtime)
    assert {u for u in stored if u.startswith(how)} == {f"{how}-{i}" for i in range(300)}
    with runtime.store.transaction() as tx:
        assert tx.events.get(f"{how}-event") is not None


def test_a_row_the_server_refuses_is_dropped_alone() -> None:
    """A server that refuses one exposure for good (INVALID_ARGUMENT: say, its experiment was
    deleted meanwhile) among nine it takes: the client finds it by halves, drops and counts it,
    and every other row arrives once."""
    hostile = _Hostile()
    hostile.refuse = "user-7"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_AssignmentServiceServicer_to_server(hostile, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with LocalClient(f"127.0.0.1:{port}", flush_interval=3600) as local:
            hostile.send(_good_update())
            assert local.wait_ready(10)
            for i in range(10):
                local.assign(f"user-{i}", KEY, default="ranker-v1")
            assert local.flush(10)
            status = local.status()
        assert (status.exposures_sent, status.exposures_dropped) == (9, 1)
        assert sorted(hostile.accepted) == sorted(f"user-{i}" for i in range(10) if i != 7)
    finally:
        server.stop(0)


# -- the wire: LogExposures, stream limits, authentication ------------------------------------


def test_log_exposures_refuses_what_the_config_does_not_allow(
    served: tuple[GrpcServer, Runtime],
) -> None:
    server, runtime = served
    now = datetime.now(UTC)

    def group(**changes: Any) -> Any:
        fields = {
            "experiment_key": KEY,
            "unit_ids": ["u-1"],
            "arm_key": "candidate",
            "model_version": "ranker-v2",
            "config_checksum": "0123456789abcdef",
            "exposed_at_unix_nanos": [int(now.timestamp() * 1e9)],
        } | changes
        return pb.ExposureGroup(**fields)

    later = int((now + timedelta(hours=2)).timestamp() * 1e9)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.AssignmentServiceStub(channel)
        for bad, field in [
            (group(experiment_key="nope"), "exposures[1].experiment_key"),
            (group(arm_key="other"), "exposures[1].arm_key"),
            (group(model_version="ranker-v9"), "exposures[1].arm_key"),
            (group(unit_ids=[""]), "exposures[1].unit_id"),
            (group(exposed_at_unix_nanos=[later]), "exposures[1].exposed_at"),
            (group(exposed_at_unix_nanos=[]), "groups[1].exposed_at_unix_nanos"),
            (group(trace_ids=["xyz"], span_ids=[""]), "exposures[1].trace_id"),
            (group(config_checksum="c\nforged\trow"), "exposures[1].config_checksum"),
            (group(config_checksum="0" * 17), "exposures[1].config_checksum"),
            (group(exposed_at_unix_nanos=[0]), "exposures[1].exposed_at"),
            (group(trace_ids=["a" * 32, "b" * 32]), "groups[1].trace_ids"),
            (group(unit_ids=[f"u{i}" for i in range(1000)],
                   exposed_at_unix_nanos=[0] * 1000), "groups"),
        ]:  # fmt: skip
            with pytest.raises(grpc.RpcError) as info:
                stub.LogExposures(
                    pb.LogExposuresRequest(groups=[group(unit_ids=["fine"]), bad]), timeout=5
                )
            assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert field in (info.value.details() or "")
        assert "fine" not in _stored(runtime)  # all validated before any is stored
        reply = stub.LogExposures(pb.LogExposuresRequest(groups=[group()]), timeout=5)
        assert reply.accepted == 1
    assert _stored(runtime)["u-1"].arm_key == "candidate"


def test_streams_beyond_the_limit_are_refused_and_unary_calls_still_answer(
    sqlite_url: str,
) -> None:
    # Streams are coroutines on the server's loop: open ones hold no thread, and unary calls
    # on the same loop still answer.
    before = set(threading.enumerate())
    server, runtime = _serve(sqlite_url, config_streams=2)
    runtime.experiments.apply(experiment_from_dict(EXPERIMENT), actor="t", start=True)
    runtime.config.refresh()
    try:
        clients = [LocalClient(server.address) for _ in range(2)]
        for c in clients:
            assert c.wait_ready(10)
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssignmentServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                next(iter(stub.WatchConfig(pb.WatchConfigRequest(), timeout=5)))
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            with ThreadPoolExecutor(4) as callers:
                answers = list(
                    callers.map(
                        lambda i: stub.Assign(pb.AssignRequest(unit_id=f"u{i}"), timeout=5),
                        range(8),
                    )
                )
            assert all(a.assignments for a in answers)
        names = [t.name for t in threading.enumerate() if t not in before]
        assert server.feed.streams == 2 and server.feed.refused == 1
        assert [n for n in names if n.startswith("abkit-")].count("abkit-grpc") == 1  # the loop
        assert not [n for n in names if n.startswith(("abkit-config_", "abkit-grpc_"))]  # no pools
        for c in clients:
            c.close()
    finally:
        server.stop(grace=1)
        runtime.close()


def test_a_current_client_resumes_with_a_heartbeat(served: tuple[GrpcServer, Runtime]) -> None:
    server, _ = served
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.AssignmentServiceStub(channel)
        call = stub.WatchConfig(pb.WatchConfigRequest(), timeout=10)
        first = next(call)
        call.cancel()
        assert first.full and len(first.experiments) == 1
        resumed = stub.WatchConfig(pb.WatchConfigRequest(known_checksum=first.checksum), timeout=10)
        again = next(resumed)
        resumed.cancel()
        assert not again.full and again.checksum == first.checksum and not again.experiments


def test_the_stream_and_log_exposures_need_the_token(sqlite_url: str) -> None:
    server, runtime = _serve(sqlite_url, api_token="s3cret")
    runtime.experiments.apply(experiment_from_dict(EXPERIMENT), actor="t", start=True)
    runtime.config.refresh()
    try:
        with LocalClient(server.address) as anonymous:
            _wait(lambda: anonymous.status().stream_error is not None)
            assert "UNAUTHENTICATED" in (anonymous.status().stream_error or "")
            assert anonymous.assign("u", KEY, default="d").reason is Reason.ERROR
        with LocalClient(server.address, token="s3cret") as local:
            assert local.wait_ready(10)
            assert local.assign("u", KEY, default="d").reason is Reason.SPLIT
            assert local.flush(10) and local.status().exposures_sent == 1
    finally:
        server.stop(grace=1)
        runtime.close()


# -- hostile config on the wire --------------------------------------------------------------------


class _Hostile(pb_grpc.AssignmentServiceServicer):
    """A server of some other kind: sends whatever the test queues, one message at a time."""

    def __init__(self) -> None:
        self.queue: list[Any] = []
        self.cond = threading.Condition()
        self.calls = 0
        self.refuse = ""
        self.accepted: list[str] = []

    def send(self, message: Any) -> None:
        with self.cond:
            self.queue.append(message)
            self.cond.notify_all()

    def LogExposures(self, request: Any, context: Any) -> Any:
        units = [u for g in request.groups for u in g.unit_ids]
        if self.refuse in units:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unit {self.refuse} refused")
        self.accepted.extend(units)
        return pb.LogExposuresResponse(accepted=len(units))

    def WatchConfig(self, request: Any, context: Any) -> Iterator[Any]:
        with self.cond:
            self.calls += 1
            me = self.calls  # only the latest stream sends: an abandoned one must not take
        while context.is_active():  # a message meant for the client's new stream
            with self.cond:
                self.cond.wait_for(lambda: bool(self.queue) or me != self.calls, timeout=0.2)
                if me != self.calls:
                    return
                message = self.queue.pop(0) if self.queue else None
            if message is not None:
                yield message


def _good_update(version: str = "ranker-v2") -> Any:
    doc = json.loads(json.dumps(EXPERIMENT))
    doc["arms"][1]["model_version"] = version
    return config_wire.full_update([experiment_from_dict(doc, status=ExperimentStatus.RUNNING)])


def test_hostile_config_keeps_the_last_good_one_and_says_why() -> None:
    hostile = _Hostile()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_AssignmentServiceServicer_to_server(hostile, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    good = _good_update()
    try:
        with LocalClient(f"127.0.0.1:{port}") as local:
            hostile.send(good)
            assert local.wait_ready(10)
            unit = next(
                f"u{i}"
                for i in range(100)
                if local.assign(f"u{i}", KEY, default="x").arm_key == "candidate"
            )

            def newer_format() -> Any:
                u = _good_update("ranker-v3")
                u.format = 2
                return u

            def missing_arms() -> Any:
                u = _good_update("ranker-v3")
                del u.experiments[0].arms[:]
                return u

            def missing_model_version() -> Any:
                u = _good_update("ranker-v3")
                u.experiments[0].arms[1].model_version = ""
                return u

            def unknown_status() -> Any:
                u = _good_update("ranker-v3")
                u.experiments[0].status = 42  # an enum value of a newer server
                return u

            def lost_salt() -> Any:  # another version's field this client does not read
                u = _good_update("ranker-v3")
                u.experiments[0].salt = "a-salt-the-checksum-did-not-cover"
                return u

            def wrong_checksum() -> Any:
                u = _good_update("ranker-v3")
                u.checksum = "0" * 64
                return u

            def absurd_nesting() -> Any:  # json.loads raises RecursionError, not ValueError
                u = _good_update("ranker-v3")
                u.experiments[0].targeting_json = "[" * 100_000 + "]" * 100_000
                return u

            def stray_heartbeat() -> Any:
                return config_wire.heartbeat("f" * 64)

            cases = [
                (newer_format, "format"),
                (missing_arms, "arms"),
                (missing_model_version, "model_version"),
                (unknown_status, "status"),
                (lost_salt, "config_checksum"),
                (wrong_checksum, "checksum"),
                (absurd_nesting, "could not be read"),
                (stray_heartbeat, "heartbeat"),
            ]
            for n, (make, why) in enumerate(cases, start=1):
                message = make()
                hostile.send(message)
                _wait(lambda n=n: local.status().rejected_configs == n)  # type: ignore[misc]
                assert why in (local.status().last_rejection or ""), local.status()
                answer = local.assign(unit, KEY, default="x")
                assert (answer.model_version, answer.reason) == ("ranker-v2", Reason.SPLIT)
                if message.full:
                    # The server's heartbeats name the config refused: not another refusal.
                    hostile.send(config_wire.heartbeat(message.checksum))
                    time.sleep(0.3)
                    assert local.status().rejected_configs == n
            # The stray heartbeat made the client resume on a new stream; a good config on it is
            # taken.
            _wait(lambda: hostile.calls == 2)
            hostile.send(_good_update("ranker-v4"))
            _wait(lambda: local.assign(unit, KEY, default="x").model_version == "ranker-v4")
    finally:
        server.stop(0)


def test_config_wire_round_trips_every_field() -> None:
    experiments = [experiment_from_dict(doc) for doc in PARITY if doc["key"] != "done"] + [
        experiment_from_dict(PARITY[4])
    ]
    update = config_wire.full_update(experiments)
    again = config_wire.read_update(pb.ConfigUpdate.FromString(update.SerializeToString()))
    assert [e.key for e in again] == [e.key for e in experiments]
    for a, b in zip(again, experiments, strict=True):
        assert (a.arms, a.salt, a.coverage, a.layer, a.holdout, a.targeting, dict(a.overrides),
                a.status, a.rollout_arm, a.model) == (
                b.arms, b.salt, b.coverage, b.layer, b.holdout, b.targeting, dict(b.overrides),
                b.status, b.rollout_arm, b.model)  # fmt: skip
    shuffled = list(experiments)
    random.Random(1).shuffle(shuffled)
    assert config_wire.full_update(shuffled).checksum == update.checksum


# -- every kind of change, threads, the staleness metric ----------------------------------


def test_every_kind_of_change_reaches_a_client_within_a_second(sql_url: str) -> None:
    server, runtime = _serve(sql_url, config_refresh_seconds=0.25)
    changes: list[float] = []
    try:
        with LocalClient(server.address, on_config=lambda _: changes.append(time.monotonic())) as c:
            assert c.wait_ready(10)

            def change(action: Callable[[], object], check: Callable[[], bool]) -> float:
                seen = len(changes)
                committed = time.monotonic()
                action()  # returns once committed
                _wait(lambda: len(changes) > seen and check(), timeout=5)
                return changes[-1] - committed

            def answer(unit: str = "user-1") -> Any:
                return c.assign(unit, KEY, default="x", attributes={"country": "US"})

            experiments, decisions = runtime.experiments, runtime.decisions
            ramped = dict(EXPERIMENT, coverage=0.5)
            delays = {
                "apply": change(
                    lambda: experiments.apply(experiment_from_dict(EXPERIMENT), actor="t"),
                    lambda: answer().reason is Reason.EXPERIMENT_NOT_RUNNING,
                ),
                "start": change(
                    lambda: experiments.start(KEY, actor="t"),
                    lambda: answer().reason is Reason.SPLIT,
                ),
                "ramp": change(
                    lambda: experiments.apply(experiment_from_dict(ramped), actor="t"),
                    lambda: c.status().checksum != "" and _coverage(c) == 0.5,
                ),
                "pause": change(
                    lambda: experiments.pause(KEY, actor="t"),
                    lambda: answer().reason is Reason.EXPERIMENT_NOT_RUNNING,
                ),
                "resume": change(
                    lambda: experiments.start(KEY, actor="t"),
                    lambda: answer().reason is not Reason.EXPERIMENT_NOT_RUNNING,
                ),
                "promote": change(
                    lambda: decisions.promote(KEY, "candidate", actor="t"),
                    lambda: answer().model_version == "ranker-v2",
                ),
                "rollback": change(
                    lambda: decisions.rollback(KEY, actor="t"),
                    lambda: (
                        answer().model_version == "ranker-v1"
                        and answer().reason is Reason.CONCLUDED
                    ),
                ),
            }
    finally:
        server.stop(grace=1)
        runtime.close()
    assert max(delays.values()) < 1.0, delays


def _coverage(client: LocalClient) -> float:
    config = client._config
    assert config is not None
    return config.catalog.get(KEY).experiment.coverage


def test_threads_share_one_client_and_every_exposure_arrives(
    served: tuple[GrpcServer, Runtime],
) -> None:
    server, runtime = served
    errors: list[BaseException] = []
    with LocalClient(server.address) as local:
        assert local.wait_ready(10)

        def caller(n: int) -> None:
            try:
                for i in range(3000):
                    unit = f"t-{(n * 1000 + i) % 6000}"  # threads overlap: shared units
                    answer = local.assign(unit, KEY, default="ranker-v1")
                    assert answer.reason is Reason.SPLIT, answer
                    if i % 100 == 0:
                        assert local.track(unit, "conversion")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=caller, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert local.flush(30)
        status = local.status()
    assert errors == []
    assert (status.exposures_dropped, status.events_sent) == (0, 8 * 30)
    assert set(_stored(runtime)) == {f"t-{i}" for i in range(6000)}


STALE_SCRIPT = """
import sys, time
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
from abkit.client import LocalClient
client = LocalClient(sys.argv[1], stale_after=0.5)
assert client.wait_ready(30)
print("ready", flush=True)
sys.stdin.readline()  # the test stops the server, then writes a line
time.sleep(1.0)
answer = client.assign("user-1", "ranker-v2", default="x")
values = {}
for rm in reader.get_metrics_data().resource_metrics:
    for sm in rm.scope_metrics:
        for m in sm.metrics:
            values[m.name] = [p.value for p in m.data.data_points]
print(answer.reason.value, values["abkit.client.config.stale"], values["abkit.client.config.age"])
client.close(0.1)
"""


def test_a_stale_config_is_served_and_says_so_in_a_metric(sqlite_url: str) -> None:
    server, runtime = _serve(sqlite_url, config_heartbeat_seconds=0.2)
    runtime.experiments.apply(experiment_from_dict(EXPERIMENT), actor="t", start=True)
    runtime.config.refresh()
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(STALE_SCRIPT), server.address],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        assert proc.stdout.readline().strip() == "ready", proc.communicate(timeout=30)
    finally:
        server.stop(grace=0)
        runtime.close()
    out, err = proc.communicate("go\n", timeout=60)
    reason, stale, age = out.strip().split(" ", 2)
    assert reason == "SPLIT", err  # the last config, still served
    assert stale == "[1]"
    assert float(age.strip("[]")) > 0.5


def test_a_client_refused_by_a_full_process_finds_the_other(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Two server processes holding one stream each: the client a full process refuses opens a
    new connection (which the kernel may route to the other process) until it is served."""
    store = SqlStore.from_url(sqlite_url)
    runtime = Runtime(Settings(database_url=sqlite_url), store)
    runtime.experiments.apply(experiment_from_dict(EXPERIMENT), actor="t", start=True)
    env = {
        "ABKIT_DATABASE_URL": sqlite_url,
        "ABKIT_SPOOL_DIR": str(tmp_path / "spool"),
        "ABKIT_CONFIG_STREAMS": "1",
    }
    proc = abkit_process(["grpc", "--address", "127.0.0.1:0", "--processes", "2"], env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening" in line, proc.communicate(timeout=30)
    port = int(line.split("(port ", 1)[1].split(",")[0].rstrip(")\n"))
    clients = [LocalClient(f"127.0.0.1:{port}") for _ in range(2)]
    try:
        for c in clients:
            assert c.wait_ready(60), c.status()
        assert sorted(established(pid, port) > 0 for pid in children(proc.pid)) == [True, True]
    finally:
        for c in clients:
            c.close(1)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        runtime.close()
