"""The gRPC service, called for real: a server on port 0, the generated stub, a real store."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from abkit.config import Settings
from abkit.core.limits import MAX_BATCH
from abkit.core.spec import experiment_from_dict
from abkit.infra.telemetry import Telemetry
from abkit.rpc.server import GrpcServer, build_server
from abkit.rpc.tracing import SERVICE
from abkit.runtime import Runtime
from abkit.store.sql import SqlStore
from abkit.v1 import assignment_pb2 as pb
from abkit.v1 import assignment_pb2_grpc as pb_grpc

EXPERIMENT = {
    "key": "ranker-v2",
    "model": "ranker",
    "targeting": {"attr": "country", "in": ["US", "CA"]},
    "arms": [
        {"key": "control", "model_version": "ranker-v1", "weight": 0.5, "control": True},
        {"key": "treatment", "model_version": "ranker-v2", "weight": 0.5},
    ],
}


@dataclass
class Harness:
    server: GrpcServer
    runtime: Runtime
    channel: grpc.Channel
    stub: pb_grpc.AssignmentServiceStub
    spans: InMemorySpanExporter


@pytest.fixture(params=["uvloop", "asyncio"])
def harness(sql_url: str, request: pytest.FixtureRequest) -> Iterator[Harness]:
    """A server on each event loop it can run on (``ABKIT_GRPC_EVENT_LOOP``): uvloop, the
    default when installed, and asyncio's own."""
    settings = Settings(
        database_url=sql_url,
        writer_flush_seconds=0.02,
        config_refresh_seconds=0.1,
        grpc_event_loop=request.param,
    )
    runtime = Runtime(settings, SqlStore.from_url(sql_url))
    runtime.experiments.apply(experiment_from_dict(EXPERIMENT), actor="test", start=True)
    runtime.start()
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    server = build_server(settings, runtime, Telemetry(provider), address="127.0.0.1:0")
    assert server.event_loop == request.param
    server.start()
    channel = grpc.insecure_channel(server.address)
    yield Harness(server, runtime, channel, pb_grpc.AssignmentServiceStub(channel), spans)
    channel.close()
    server.stop(grace=1)
    runtime.close()
    provider.shutdown()


def us(unit: str, **extra: pb.AttributeValue) -> pb.AssignRequest:
    return pb.AssignRequest(
        unit_id=unit, attributes={"country": pb.AttributeValue(string_value="US"), **extra}
    )


def test_assign_returns_a_model_version_and_logs_the_exposure_with_the_callers_trace(
    harness: Harness,
) -> None:
    caller = TracerProvider().get_tracer("caller")
    with caller.start_as_current_span("checkout") as span:
        metadata: dict[str, str] = {}
        inject(metadata)
        client_trace = f"{span.get_span_context().trace_id:032x}"
    reply = harness.stub.Assign(us("user-1"), metadata=tuple(metadata.items()), timeout=5)
    (a,) = reply.assignments
    assert a.experiment_key == "ranker-v2"
    assert a.model_version in ("ranker-v1", "ranker-v2")
    assert a.reason == pb.REASON_SPLIT and a.in_experiment
    assert harness.runtime.flush(5)
    with harness.runtime.store.transaction() as tx:
        row = tx.exposures.get("ranker-v2", "user-1")
    assert row is not None
    assert row.trace_id == client_trace
    assert row.arm_key == a.arm_key and row.model_version == a.model_version
    # The stored span id is the server span of this RPC, a child of the caller's span.
    server_spans = [
        s for s in harness.spans.get_finished_spans() if s.kind == trace.SpanKind.SERVER
    ]
    assign_span = next(s for s in server_spans if s.name.endswith("/Assign"))
    assert f"{assign_span.context.span_id:016x}" == row.span_id
    assert (
        assign_span.parent is not None
        and assign_span.parent.span_id == span.get_span_context().span_id
    )
    assert assign_span.attributes is not None and assign_span.attributes["rpc.system"] == "grpc"


def test_assignment_is_deterministic_and_first_exposure_is_kept(harness: Harness) -> None:
    first = harness.stub.Assign(us("user-7"), timeout=5).assignments[0]
    for _ in range(5):
        assert harness.stub.Assign(us("user-7"), timeout=5).assignments[0] == first
    assert harness.runtime.flush(5)
    with harness.runtime.store.transaction() as tx:
        assert sum(tx.exposures.counts("ranker-v2").values()) == 1


def test_targeting_miss_gets_control_and_is_not_logged(harness: Harness) -> None:
    reply = harness.stub.Assign(
        pb.AssignRequest(
            unit_id="user-de", attributes={"country": pb.AttributeValue(string_value="DE")}
        ),
        timeout=5,
    )
    (a,) = reply.assignments
    assert (a.arm_key, a.model_version, a.reason, a.in_experiment) == (
        "control", "ranker-v1", pb.REASON_TARGETING_MISS, False,
    )  # fmt: skip
    # A unit that does enter is logged through the same pipeline: once it is in the store, the
    # miss had every chance to be written too.
    (entered,) = harness.stub.Assign(us("user-in"), timeout=5).assignments
    assert entered.in_experiment
    assert harness.runtime.flush(5)
    with harness.runtime.store.transaction() as tx:
        assert tx.exposures.get("ranker-v2", "user-in") is not None
        assert tx.exposures.get("ranker-v2", "user-de") is None


def test_assign_batch_answers_in_order(harness: Harness) -> None:
    requests = [us(f"u{i}") for i in range(300)]
    reply = harness.stub.AssignBatch(pb.AssignBatchRequest(requests=requests), timeout=10)
    assert len(reply.responses) == 300
    singles = [harness.stub.Assign(r, timeout=5).assignments[0] for r in requests[:20]]
    assert [r.assignments[0] for r in reply.responses[:20]] == singles
    assert harness.runtime.flush(5)
    with harness.runtime.store.transaction() as tx:
        assert sum(tx.exposures.counts("ranker-v2").values()) == 300


def _serve_new_experiment(harness: Harness, spec: dict[str, object]) -> None:
    harness.runtime.experiments.apply(experiment_from_dict(spec), actor="test", start=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            harness.stub.Assign(pb.AssignRequest(unit_id="probe", experiment_keys=[spec["key"]]))
            return
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            time.sleep(0.05)
    pytest.fail(f"{spec['key']} was not served within 5 s")


PLAIN = {
    **EXPERIMENT,
    "key": "plain-v1",
    "model": "plain",
    "targeting": None,
    "coverage": 0.7,
    "holdout": {"key": "global", "fraction": 0.1},
    "overrides": {"p7": "treatment"},
}


def test_a_plain_batch_answers_and_stores_what_the_general_path_does(harness: Harness) -> None:
    """Units without attributes take the wire-bytes path (abkit.core.plain); the same units with
    an attribute take the per-message one. Same answers; the rows stored are those of the
    randomized units, with the caller's trace."""
    _serve_new_experiment(harness, PLAIN)
    keys = ["plain-v1", "ranker-v2"]
    units = [f"p{i}" for i in range(400)]
    plain = pb.AssignBatchRequest(
        requests=[pb.AssignRequest(unit_id=u, experiment_keys=keys) for u in units]
    )
    general = pb.AssignBatchRequest(
        requests=[
            pb.AssignRequest(
                unit_id=u,
                experiment_keys=keys,
                attributes={"app": pb.AttributeValue(string_value="web")},
            )
            for u in units
        ]
    )
    tracer = TracerProvider().get_tracer("caller")
    with tracer.start_as_current_span("caller") as span:
        metadata: dict[str, str] = {}
        inject(metadata)
        reply = harness.stub.AssignBatch(plain, metadata=tuple(metadata.items()), timeout=10)
    assert reply == harness.stub.AssignBatch(general, timeout=10)
    for plain_unit, general_unit, response in zip(
        plain.requests[:50], general.requests[:50], reply.responses[:50], strict=True
    ):  # Assign takes the same two paths
        assert harness.stub.Assign(plain_unit, timeout=5) == response
        assert harness.stub.Assign(general_unit, timeout=5) == response
    answers = [r.assignments[0] for r in reply.responses]
    assert [r.assignments[1].reason for r in reply.responses] == [pb.REASON_TARGETING_MISS] * 400
    reasons = {a.reason for a in answers}
    assert reasons == {
        pb.REASON_SPLIT,
        pb.REASON_HOLDOUT,
        pb.REASON_NOT_IN_COVERAGE,
        pb.REASON_OVERRIDE,
    }
    assert harness.runtime.flush(5)
    trace_id = f"{span.get_span_context().trace_id:032x}"
    with harness.runtime.store.transaction() as tx:
        for unit, answer in zip(units, answers, strict=True):
            stored = tx.exposures.get("plain-v1", unit)
            if answer.reason != pb.REASON_SPLIT:
                assert stored is None
                continue
            assert stored is not None
            assert (stored.arm_key, stored.model_version) == (answer.arm_key, answer.model_version)
            assert stored.trace_id == trace_id
        split = sum(a.reason == pb.REASON_SPLIT for a in answers)
        probe = tx.exposures.get("plain-v1", "probe") is not None  # _serve_new_experiment's
        assert sum(tx.exposures.counts("plain-v1").values()) == split + probe


def test_a_plain_batch_with_an_unknown_or_bad_key_or_too_many_units_is_refused(
    harness: Harness,
) -> None:
    def batch(keys: list[str], n: int = 3) -> pb.AssignBatchRequest:
        return pb.AssignBatchRequest(
            requests=[pb.AssignRequest(unit_id=f"b{i}", experiment_keys=keys) for i in range(n)]
        )

    code, details = _code(lambda: harness.stub.AssignBatch(batch(["nope"]), timeout=5))
    assert code == grpc.StatusCode.NOT_FOUND and "'nope'" in details
    code, details = _code(lambda: harness.stub.AssignBatch(batch(["Not A Key"]), timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("requests[0].experiment_keys[0]")
    code, details = _code(lambda: harness.stub.AssignBatch(batch([], MAX_BATCH + 1), timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("requests")
    code, details = _code(lambda: harness.stub.AssignBatch(batch(["ranker-v2"] * 101), timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("requests[0].experiment_keys")
    for method in ("Assign", "AssignBatch"):
        raw = harness.channel.unary_unary(f"/{SERVICE}/{method}")
        code, details = _code(lambda: raw(b"\x0a\xff\xff", timeout=5))  # noqa: B023
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith(f"request: is not a valid {method}Request")
    assert harness.runtime.flush(5)
    with harness.runtime.store.transaction() as tx:
        assert tx.exposures.get("ranker-v2", "b0") is None


def test_track_stores_events_with_trace_ids(harness: Harness) -> None:
    reply = harness.stub.Track(pb.TrackRequest(unit_id="user-1", metric="conversion"), timeout=5)
    assert len(reply.event_id) == 32
    batch = harness.stub.TrackBatch(
        pb.TrackBatchRequest(
            events=[
                pb.TrackRequest(unit_id="user-2", metric="revenue", value=12.5, event_id="order-1"),
                pb.TrackRequest(unit_id="user-3", metric="revenue", value=0.0, event_id="order-2"),
            ]
        ),
        timeout=5,
    )
    assert list(batch.event_ids) == ["order-1", "order-2"]
    # A retry with the same event id is stored once.
    harness.stub.Track(
        pb.TrackRequest(unit_id="user-2", metric="revenue", value=12.5, event_id="order-1"),
        timeout=5,
    )
    assert harness.runtime.flush(5)
    with harness.runtime.store.transaction() as tx:
        assert tx.events.count() == 3
        single = tx.events.get(reply.event_id)
        order = tx.events.get("order-1")
    assert single is not None and single.value == 1.0 and single.metric == "conversion"
    assert len(single.trace_id) == 32 and len(single.span_id) == 16
    assert order is not None and order.value == 12.5


def _code(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code(), info.value.details()


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.AssignRequest(unit_id=""), "unit_id"),
        (pb.AssignRequest(unit_id="x" * 257), "unit_id"),
        (pb.AssignRequest(unit_id="a\nb"), "unit_id"),
        (
            pb.AssignRequest(
                unit_id="u", attributes={"n": pb.AttributeValue(number_value=math.nan)}
            ),
            "attributes['n']",
        ),
        (pb.AssignRequest(unit_id="u", attributes={"n": pb.AttributeValue()}), "attributes['n']"),
        (pb.AssignRequest(unit_id="u", experiment_keys=["Not A Key"]), "experiment_keys[0]"),
    ],
)
def test_bad_assign_requests_are_invalid_argument_naming_the_field(
    harness: Harness, request_: pb.AssignRequest, field: str
) -> None:
    code, details = _code(lambda: harness.stub.Assign(request_, timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(field)


def test_unknown_experiment_is_not_found(harness: Harness) -> None:
    code, details = _code(
        lambda: harness.stub.Assign(
            pb.AssignRequest(unit_id="u", experiment_keys=["nope"]), timeout=5
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND and "'nope'" in details


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (pb.TrackRequest(unit_id="u", metric="Bad Metric"), "metric"),
        (pb.TrackRequest(unit_id="u", metric="m", value=math.inf), "value"),
        (pb.TrackRequest(unit_id="u", metric="m", value=math.nan), "value"),
        (pb.TrackRequest(unit_id="", metric="m"), "unit_id"),
        (pb.TrackRequest(unit_id="u", metric="m", event_id="has space"), "event_id"),
    ],
)
def test_bad_events_are_invalid_argument(
    harness: Harness, event: pb.TrackRequest, field: str
) -> None:
    code, details = _code(lambda: harness.stub.Track(event, timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(field)


def test_a_batch_with_one_bad_event_writes_nothing(harness: Harness) -> None:
    events = [pb.TrackRequest(unit_id=f"u{i}", metric="conversion") for i in range(10)]
    events.append(pb.TrackRequest(unit_id="u", metric="conversion", value=math.nan))
    code, details = _code(
        lambda: harness.stub.TrackBatch(pb.TrackBatchRequest(events=events), timeout=5)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("events[10].value")
    code, _ = _code(lambda: harness.stub.TrackBatch(pb.TrackBatchRequest(events=[]), timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # A good event after the refused batches goes through the same pipeline: once it is stored,
    # anything of the refused batches would have been stored too.
    harness.stub.Track(pb.TrackRequest(unit_id="after", metric="conversion"), timeout=5)
    assert harness.runtime.flush(5)
    with harness.runtime.store.transaction() as tx:
        assert tx.events.count() == 1


def test_health_reports_serving_once_config_is_loaded(harness: Harness) -> None:
    stub = health_pb2_grpc.HealthStub(harness.channel)
    deadline = time.monotonic() + 5
    status = None
    while time.monotonic() < deadline:
        status = stub.Check(
            health_pb2.HealthCheckRequest(service="abkit.v1.AssignmentService"), timeout=5
        ).status
        if status == health_pb2.HealthCheckResponse.SERVING:
            break
        time.sleep(0.05)
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert (
        stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        == health_pb2.HealthCheckResponse.SERVING
    )


def test_reflection_lists_the_service(harness: Harness) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(harness.channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"abkit.v1.AssignmentService", "grpc.health.v1.Health"} <= names


def test_newly_applied_experiment_is_served_without_restart(harness: Harness) -> None:
    new = {**EXPERIMENT, "key": "search-v3", "model": "search", "targeting": None}
    harness.runtime.experiments.apply(experiment_from_dict(new), actor="test", start=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            reply = harness.stub.Assign(
                pb.AssignRequest(unit_id="u1", experiment_keys=["search-v3"]), timeout=5
            )
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            time.sleep(0.05)
    else:
        pytest.fail("the new experiment was not served within 5 s")
    assert reply.assignments[0].experiment_key == "search-v3"


def test_health_is_not_serving_until_the_config_has_loaded(tmp_path: object) -> None:
    from abkit.store.memory import MemoryStore

    store = MemoryStore()
    settings = Settings(config_refresh_seconds=0.1, spool_dir="off")
    runtime = Runtime(settings, store)
    runtime.experiments.apply(experiment_from_dict(EXPERIMENT), actor="t", start=True)
    store.available = False  # the store is down when the server starts
    runtime.start()
    server = build_server(settings, runtime, Telemetry(TracerProvider()), address="127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="abkit.v1.AssignmentService")
            time.sleep(0.5)
            assert (
                health.Check(request, timeout=5).status
                == health_pb2.HealthCheckResponse.NOT_SERVING
            )
            with pytest.raises(grpc.RpcError) as info:  # no config: refuse, do not guess
                pb_grpc.AssignmentServiceStub(channel).Assign(
                    pb.AssignRequest(unit_id="u"), timeout=5
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            store.available = True
            deadline = time.monotonic() + 5
            while health.Check(request, timeout=5).status != health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() < deadline, "never became SERVING"
                time.sleep(0.05)
    finally:
        server.stop(grace=1)
        runtime.close()


def test_unrecorded_spans_still_stamp_rows_with_the_callers_trace(sqlite_url: str) -> None:
    # With no exporter configured, spans are not recorded, but ids must still flow to the rows.
    from abkit.infra import telemetry

    settings = Settings(database_url=sqlite_url, writer_flush_seconds=0.02)
    tel = telemetry.build(settings)
    # Nothing configured: no spans and no per-RPC measurements that nobody would read.
    assert not tel.records_spans and not tel.records_metrics
    runtime = Runtime(settings, SqlStore.from_url(sqlite_url))
    runtime.experiments.apply(experiment_from_dict(EXPERIMENT), actor="t", start=True)
    runtime.start()
    server = build_server(settings, runtime, tel, address="127.0.0.1:0")
    server.start()
    try:
        traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        with grpc.insecure_channel(server.address) as channel:
            pb_grpc.AssignmentServiceStub(channel).Assign(
                us("traced"), metadata=(("traceparent", traceparent),), timeout=5
            )
        assert runtime.flush(5)
        with runtime.store.transaction() as tx:
            row = tx.exposures.get("ranker-v2", "traced")
    finally:
        server.stop(grace=1)
        runtime.close()
        tel.shutdown()
    assert row is not None and row.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert len(row.span_id) == 16 and row.span_id != "b7ad6b7169203331"
