"""Every RPC field fuzzed through a real gRPC server: no INTERNAL, no crash, no partial write.

Budget and reproducibility: each property runs a fixed number of examples with
``derandomize=True`` (a fixed seed: the same inputs in CI every time) and no example database,
plus explicit ``@example`` cases for the edges named in the issue. Hypothesis refuses a database
next to a fixed seed ("derandomize=True implies database=None"), so an input that once broke
something is pinned as an ``@example`` on its test: replayed first, in every run, for ever.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider

from abkit.config import Settings
from abkit.core.limits import MAX_BATCH
from abkit.core.spec import experiment_from_dict
from abkit.infra.telemetry import Telemetry
from abkit.rpc.server import build_server
from abkit.runtime import Runtime
from abkit.store.sql import SqlStore
from abkit.v1 import assignment_pb2 as pb
from abkit.v1 import assignment_pb2_grpc as pb_grpc
from tests.helpers import EXPERIMENT

SERIAL = itertools.count()
ACCEPTABLE = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
FUZZ = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Served:
    def __init__(self, url: str) -> None:
        self.settings = Settings(database_url=url, writer_flush_seconds=0.02)
        self.runtime = Runtime(self.settings, SqlStore.from_url(url))
        self.runtime.experiments.apply(experiment_from_dict(EXPERIMENT), actor="t", start=True)
        self.runtime.start()
        self.server = build_server(
            self.settings, self.runtime, Telemetry(TracerProvider()), address="127.0.0.1:0"
        )
        self.server.start()
        self.channel = grpc.insecure_channel(self.server.address)
        self.stub = pb_grpc.AssignmentServiceStub(self.channel)

    def call(self, method: str, request: Any) -> grpc.StatusCode:
        try:
            getattr(self.stub, method)(request, timeout=10)
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            assert code in ACCEPTABLE, f"{method} answered {code}: {exc.details()}"
            return code
        return grpc.StatusCode.OK

    def close(self) -> None:
        self.channel.close()
        self.server.stop(grace=1)
        self.runtime.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from abkit.store import migrate
    from abkit.store.engine import create_store_engine

    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'fuzz.db'}"
    engine = create_store_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    served = Served(url)
    yield served
    served.close()


# Anything a client could put in a string: unicode, emoji, control characters, empty, long.
texts = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=200, max_size=2000),
    st.sampled_from(
        ["", " ", "\x00", "a\nb", "ranker-v2", "<script>", "𝔘🙂", "x" * 257, "é" * 129]
    ),
)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e308, -1e308])
)
attribute_values = st.one_of(
    st.builds(lambda s: pb.AttributeValue(string_value=s), texts),
    st.builds(lambda x: pb.AttributeValue(number_value=x), numbers),
    st.builds(lambda b: pb.AttributeValue(bool_value=b), st.booleans()),
    st.just(pb.AttributeValue()),  # no value set at all
)
assign_requests = st.builds(
    lambda unit, attrs, keys: pb.AssignRequest(
        unit_id=unit, attributes=attrs, experiment_keys=keys
    ),
    texts,
    st.dictionaries(texts, attribute_values, max_size=70),
    st.lists(st.one_of(texts, st.just("ranker-v2")), max_size=3),
)


@FUZZ
@given(request=assign_requests)
@example(request=pb.AssignRequest())
@example(request=pb.AssignRequest(unit_id="u", experiment_keys=["ranker-v2", "ranker-v2"]))
@example(request=pb.AssignRequest(unit_id="u", experiment_keys=["ranker-v2"] * 101))
def test_assign_never_fails_internally(served: Served, request: Any) -> None:
    served.call("Assign", request)


@FUZZ
@given(requests=st.lists(assign_requests, max_size=5), extra=st.sampled_from([0, 0, MAX_BATCH + 1]))
def test_assign_batch_never_fails_internally(
    served: Served, requests: list[Any], extra: int
) -> None:
    filler = [pb.AssignRequest(unit_id=f"f{i}") for i in range(extra)]
    code = served.call("AssignBatch", pb.AssignBatchRequest(requests=requests + filler))
    if (not requests and not filler) or extra > 0:
        assert code == grpc.StatusCode.INVALID_ARGUMENT


def _mutations(data: bytes, cut: int | None, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data if cut is None else data[:cut])
    for at, byte in flips:
        if out:
            out[at % len(out)] = byte
    return bytes(out)


@FUZZ
@given(
    requests=st.lists(assign_requests, max_size=4),
    cut=st.none() | st.integers(0, 60),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3),
)
@example(requests=[pb.AssignRequest(unit_id="u")], cut=None, flips=[(1, 0xFF)])
def test_assign_batch_bytes_never_fail_internally(
    served: Served, requests: list[Any], cut: int | None, flips: list[tuple[int, int]]
) -> None:
    """Truncated and corrupted bodies: the wire-bytes reader (abkit.core.plain) falls back to
    protobuf, which accepts or refuses them; never INTERNAL or UNKNOWN."""
    data = pb.AssignBatchRequest(requests=requests).SerializeToString()
    raw = served.channel.unary_unary("/abkit.v1.AssignmentService/AssignBatch")
    try:
        raw(_mutations(data, cut, flips), timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() in ACCEPTABLE, f"AssignBatch answered {exc.code()}: {exc.details()}"


def track_request(
    unit: str, metric: str, value: float | None, seconds: int, nanos: int, event_id: str
) -> Any:
    request = pb.TrackRequest(unit_id=unit, metric=metric, event_id=event_id)
    if value is not None:
        request.value = value
    if seconds or nanos:
        request.occurred_at.seconds = seconds
        request.occurred_at.nanos = nanos
    return request


track_requests = st.builds(
    track_request,
    texts,
    st.one_of(texts, st.sampled_from(["conversion", "revenue", "a" * 65, "Conversion"])),
    st.one_of(st.none(), numbers),
    st.one_of(st.just(0), st.integers(-(2**62), 2**62), st.integers(0, 4_102_444_800)),
    st.one_of(st.just(0), st.integers(-(2**31), 2**31 - 1)),
    st.one_of(st.just(""), texts, st.uuids().map(lambda u: u.hex)),
)


@FUZZ
@given(request=track_requests)
@example(request=pb.TrackRequest())
@example(request=track_request("u", "conversion", math.nan, 0, 0, ""))
@example(request=track_request("u", "conversion", 1.0, 253402300800, 0, ""))  # year 10000
def test_track_never_fails_internally(served: Served, request: Any) -> None:
    served.call("Track", request)


@FUZZ
@given(events=st.lists(track_requests, max_size=6), valid=st.integers(0, 4))
def test_a_rejected_track_batch_writes_nothing(
    served: Served, events: list[Any], valid: int
) -> None:
    good = [
        pb.TrackRequest(unit_id=f"u{i}", metric="conversion", event_id=f"fuzz-{next(SERIAL)}")
        for i in range(valid)
    ]
    batch = good + events
    code = served.call("TrackBatch", pb.TrackBatchRequest(events=batch))
    if code != grpc.StatusCode.OK:
        assert served.runtime.flush(5)
        with served.runtime.store.transaction() as tx:
            assert all(tx.events.get(e.event_id) is None for e in good)


def test_batches_over_the_limit_are_refused_whole(served: Served) -> None:
    events = [
        pb.TrackRequest(unit_id="u", metric="conversion", event_id=f"big-{i}")
        for i in range(MAX_BATCH + 1)
    ]
    assert (
        served.call("TrackBatch", pb.TrackBatchRequest(events=events))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert served.runtime.flush(5)
    with served.runtime.store.transaction() as tx:
        assert tx.events.get("big-0") is None
    ok = served.call("TrackBatch", pb.TrackBatchRequest(events=events[:MAX_BATCH]))
    assert ok == grpc.StatusCode.OK
