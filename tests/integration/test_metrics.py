"""Metrics read back through the SDK's in-memory reader after a burst of real RPCs."""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any

import grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from abkit.config import Settings
from abkit.core.spec import experiment_from_dict
from abkit.infra.telemetry import Telemetry
from abkit.rpc.server import build_server
from abkit.runtime import Runtime
from abkit.store.sql import SqlStore
from abkit.v1 import assignment_pb2 as pb
from abkit.v1 import assignment_pb2_grpc as pb_grpc
from tests.helpers import EXPERIMENT


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    found: dict[str, list[Any]] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def test_counts_match_a_burst_of_rpcs(sqlite_url: str) -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(TracerProvider(), MeterProvider(metric_readers=[reader]))
    settings = Settings(database_url=sqlite_url, writer_flush_seconds=0.02)
    runtime = Runtime(settings, SqlStore.from_url(sqlite_url))
    runtime.experiments.apply(experiment_from_dict(EXPERIMENT), actor="t", start=True)
    runtime.start()
    server = build_server(settings, runtime, telemetry, address="127.0.0.1:0")
    server.start()
    arms: Counter[str] = Counter()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssignmentServiceStub(channel)
            for i in range(40):
                reply = stub.Assign(pb.AssignRequest(unit_id=f"u{i}"), timeout=5)
                arms[reply.assignments[0].arm_key] += 1
            batch = stub.AssignBatch(
                pb.AssignBatchRequest(
                    requests=[pb.AssignRequest(unit_id=f"b{i}") for i in range(60)]
                ),
                timeout=5,
            )
            for response in batch.responses:
                arms[response.assignments[0].arm_key] += 1
            for i in range(25):
                stub.Track(pb.TrackRequest(unit_id=f"u{i}", metric="conversion"), timeout=5)
            with contextlib.suppress(grpc.RpcError):  # INVALID_ARGUMENT, recorded as code 3
                stub.Track(pb.TrackRequest(unit_id="", metric="conversion"), timeout=5)
        assert runtime.flush(5)
        found = points(reader)
    finally:
        server.stop(grace=1)
        runtime.close()
        telemetry.shutdown()

    by_arm = Counter({p.attributes["abkit.arm"]: p.value for p in found["abkit.assignments"]})
    assert by_arm == arms and sum(by_arm.values()) == 100
    assert {p.attributes["abkit.reason"] for p in found["abkit.assignments"]} == {"SPLIT"}
    durations = {
        (p.attributes["rpc.method"], p.attributes["rpc.grpc.status_code"]): p.count
        for p in found["rpc.server.duration"]
    }
    assert durations == {
        ("Assign", 0): 40,
        ("AssignBatch", 0): 1,
        ("Track", 0): 25,
        ("Track", 3): 1,
    }
    written = {p.attributes["abkit.writer"]: p.value for p in found["abkit.records.written"]}
    assert written == {"exposures": 100, "events": 25}
    assert {p.attributes["abkit.writer"]: p.value for p in found["abkit.records.dropped"]} == {
        "exposures": 0,
        "events": 0,
    }
    assert [p.value for p in found["abkit.store.up"]] == [1]
    assert sum(p.value for p in found["abkit.writer.queue_depth"]) == 0


def test_the_prometheus_endpoint_serves_the_same_metrics(sqlite_url: str) -> None:
    import socket
    import urllib.request

    from abkit.infra import telemetry

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(database_url=sqlite_url, writer_flush_seconds=0.02, metrics_port=port)
    tel = telemetry.build(settings)
    assert tel.records_metrics  # a reader is configured: RPCs are measured
    runtime = Runtime(settings, SqlStore.from_url(sqlite_url))
    runtime.experiments.apply(experiment_from_dict(EXPERIMENT), actor="t", start=True)
    runtime.start()
    server = build_server(settings, runtime, tel, address="127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssignmentServiceStub(channel)
            for i in range(7):
                stub.Assign(pb.AssignRequest(unit_id=f"p{i}"), timeout=5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.stop(grace=1)
        runtime.close()
        tel.shutdown()
    lines = [line for line in text.splitlines() if line.startswith("abkit_assignments_total")]
    assert lines and sum(float(line.rsplit(" ", 1)[1]) for line in lines) == 7
    assert "abkit_store_up" in text
