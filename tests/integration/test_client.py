"""abkit.client.Client against a real server: answers, defaults on failure, retries, tracing."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from abkit.client import Client
from abkit.config import Settings
from abkit.core.model import Reason
from abkit.core.spec import experiment_from_dict
from abkit.infra.telemetry import Telemetry
from abkit.rpc.server import GrpcServer, build_server
from abkit.runtime import Runtime
from abkit.store.sql import SqlStore
from abkit.v1 import assignment_pb2 as pb
from abkit.v1 import assignment_pb2_grpc as pb_grpc
from tests.helpers import EXPERIMENT


@pytest.fixture
def served(sqlite_url: str) -> Iterator[tuple[GrpcServer, Runtime]]:
    settings = Settings(database_url=sqlite_url, writer_flush_seconds=0.02)
    runtime = Runtime(settings, SqlStore.from_url(sqlite_url))
    runtime.experiments.apply(experiment_from_dict(EXPERIMENT), actor="t", start=True)
    runtime.start()
    server = build_server(settings, runtime, Telemetry(TracerProvider()), address="127.0.0.1:0")
    server.start()
    yield server, runtime
    server.stop(grace=1)
    runtime.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_assign_and_track_through_the_client(served: tuple[GrpcServer, Runtime]) -> None:
    server, runtime = served
    with Client(server.address, timeout=2) as client:
        answer = client.assign(
            "user-1", "ranker-v2", default="ranker-v1", attributes={"n": 3, "vip": True}
        )
        assert answer.error is None and answer.reason is Reason.SPLIT and answer.in_experiment
        assert answer.model_version in ("ranker-v1", "ranker-v2")
        assert client.track("user-1", "conversion")
        assert client.track("user-1", "revenue", 9.5)
    assert runtime.flush(5)
    with runtime.store.transaction() as tx:
        assert tx.events.count() == 2
        assert tx.exposures.get("ranker-v2", "user-1") is not None


def test_failures_return_the_default_never_raise(
    served: tuple[GrpcServer, Runtime], caplog: pytest.LogCaptureFixture
) -> None:
    server, _ = served
    caplog.set_level(logging.WARNING, logger="abkit.client")
    with Client(server.address, timeout=2) as client:
        unknown = client.assign("user-1", "no-such-experiment", default="model-v1")
        bad_input = client.assign("", "ranker-v2", default="ranker-v1")
        bad_type = client.assign("u", "ranker-v2", default="ranker-v1", attributes={"x": [1]})  # type: ignore[dict-item]
        assert not client.track("u", "Not A Metric")
    for answer, default in (
        (unknown, "model-v1"),
        (bad_input, "ranker-v1"),
        (bad_type, "ranker-v1"),
    ):
        assert (answer.model_version, answer.reason, answer.in_experiment) == (
            default,
            Reason.ERROR,
            False,
        )
        assert answer.error
    assert "NOT_FOUND" in (unknown.error or "") and "INVALID_ARGUMENT" in (bad_input.error or "")
    assert "serving the defaults" in caplog.text


def test_a_dead_server_costs_one_deadline_and_returns_the_default() -> None:
    with Client(f"127.0.0.1:{free_port()}", timeout=0.2, retries=1) as client:
        started = time.perf_counter()
        answer = client.assign("u", "ranker-v2", default="ranker-v1")
        elapsed = time.perf_counter() - started
        assert not client.track("u", "conversion")
    assert answer.reason is Reason.ERROR and answer.model_version == "ranker-v1"
    assert elapsed < 1.0


class Flaky(pb_grpc.AssignmentServiceServicer):
    """A stand-in *server* that is UNAVAILABLE twice, then answers (the client is under test)."""

    def __init__(self) -> None:
        self.calls = 0
        self.event_ids: list[str] = []
        self.metadata: list[dict[str, str]] = []

    def Assign(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.calls += 1
        self.metadata.append(dict(context.invocation_metadata()))
        if self.calls <= 2:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return pb.AssignResponse(
            assignments=[
                pb.Assignment(
                    experiment_key="e",
                    arm_key="t",
                    model_version="v2",
                    reason=pb.REASON_SPLIT,
                    in_experiment=True,
                )
            ]
        )

    def TrackBatch(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.event_ids += [e.event_id for e in request.events]
        if len(self.event_ids) == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "busy")
        return pb.TrackBatchResponse(event_ids=[e.event_id for e in request.events])


def test_unavailable_is_retried_with_the_same_event_id_and_a_token() -> None:
    flaky = Flaky()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_AssignmentServiceServicer_to_server(flaky, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with Client(f"127.0.0.1:{port}", timeout=2, retries=2, token="s3cret") as client:
            answer = client.assign("u", "e", default="v1")
            assert client.track("u", "conversion")
    finally:
        server.stop(0).wait()
    assert (answer.model_version, answer.reason, flaky.calls) == ("v2", Reason.SPLIT, 3)
    assert all(m.get("authorization") == "Bearer s3cret" for m in flaky.metadata)
    assert len(flaky.event_ids) == 2 and flaky.event_ids[0] == flaky.event_ids[1]


def test_the_client_is_safe_to_share_between_threads(served: tuple[GrpcServer, Runtime]) -> None:
    server, _ = served
    errors: list[str] = []
    with Client(server.address, timeout=2) as client:

        def work(t: int) -> None:
            for i in range(50):
                answer = client.assign(f"t{t}-u{i}", "ranker-v2", default="ranker-v1")
                if answer.error:
                    errors.append(answer.error)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
