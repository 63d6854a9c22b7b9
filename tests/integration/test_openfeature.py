"""abkit's OpenFeature provider through the official ``openfeature-sdk``, against a real server."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason as OpenFeatureReason
from openfeature.track import TrackingEventDetails
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import text

from abkit.config import Settings
from abkit.core.spec import experiment_from_dict
from abkit.infra.telemetry import Telemetry
from abkit.openfeature import AbkitProvider
from abkit.rpc.server import GrpcServer, build_server
from abkit.runtime import Runtime
from abkit.store.sql import SqlStore
from tests.helpers import EXPERIMENT

KEY = EXPERIMENT["key"]
TARGETED = {
    "key": "targeted",
    "targeting": {"attr": "country", "in": ["US"]},
    "overrides": {"qa-user": "treatment"},
    "arms": [
        {"key": "control", "model_version": "t1", "weight": 0.5, "control": True},
        {"key": "treatment", "model_version": "t2", "weight": 0.5},
    ],
}


@pytest.fixture
def provider(sqlite_url: str) -> Iterator[tuple[AbkitProvider, Runtime]]:
    settings = Settings(
        database_url=sqlite_url, writer_flush_seconds=0.02, config_refresh_seconds=0.05
    )
    runtime = Runtime(settings, SqlStore.from_url(sqlite_url))
    for doc in (EXPERIMENT, TARGETED):
        runtime.experiments.apply(experiment_from_dict(doc), actor="t", start=True)
    runtime.start()
    server: GrpcServer = build_server(
        settings, runtime, Telemetry(TracerProvider()), address="127.0.0.1:0"
    )
    server.start()
    abkit = AbkitProvider(target=server.address, ready_timeout=10)
    api.set_provider_and_wait(abkit)
    yield abkit, runtime
    api.shutdown()
    api.clear_providers()
    server.stop(grace=1)
    runtime.close()


def test_evaluation_serves_the_model_version_with_arm_and_reason(
    provider: tuple[AbkitProvider, Runtime],
) -> None:
    abkit, runtime = provider
    client = api.get_client()
    details = client.get_string_details(
        KEY, "ranker-v1", EvaluationContext(targeting_key="user-1", attributes={"tier": "gold"})
    )
    assert details.error_code is None
    assert details.reason == OpenFeatureReason.SPLIT
    assert details.value in ("ranker-v1", "ranker-v2")
    assert details.variant == ("control" if details.value == "ranker-v1" else "candidate")
    assert details.flag_metadata == {
        "arm": details.variant,
        "in_experiment": True,
        "abkit_reason": "SPLIT",
        "config_stale": False,
    }
    # The exposure is logged on evaluation.
    assert abkit.client.flush(10) and runtime.flush(10)
    assert isinstance(runtime.store, SqlStore)
    with runtime.store.engine.connect() as conn:
        arm = conn.execute(
            text("SELECT arm_key FROM exposures WHERE unit_id = 'user-1' AND experiment_key = :k"),
            {"k": KEY},
        ).scalar()
    assert arm == details.variant


def test_reasons_map_to_openfeatures(provider: tuple[AbkitProvider, Runtime]) -> None:
    _, runtime = provider
    client = api.get_client()

    def reason(unit: str, country: str | None = None, key: str = "targeted") -> object:
        attributes = {} if country is None else {"country": country}
        return client.get_string_details(
            key, "t1", EvaluationContext(targeting_key=unit, attributes=attributes)
        ).reason

    assert reason("qa-user") == OpenFeatureReason.TARGETING_MATCH
    assert reason("user-1", "FR") == OpenFeatureReason.DEFAULT
    assert reason("user-1", "US") == OpenFeatureReason.SPLIT
    changed = threading.Event()

    def on_change(details: EventDetails) -> None:
        changed.set()

    api.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, on_change)
    try:
        runtime.decisions.promote("targeted", "treatment", actor="t")
        assert changed.wait(10)
        assert reason("user-2", "US") == OpenFeatureReason.STATIC
        changed.clear()
        runtime.experiments.pause(KEY, actor="t")
        assert changed.wait(10)
        assert reason("user-2", key=KEY) == OpenFeatureReason.DISABLED
    finally:
        api.remove_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, on_change)


def test_errors_return_the_default_with_an_error_code(
    provider: tuple[AbkitProvider, Runtime],
) -> None:
    client = api.get_client()
    unknown = client.get_string_details("missing", "v0", EvaluationContext(targeting_key="u"))
    assert (unknown.value, unknown.error_code) == ("v0", ErrorCode.FLAG_NOT_FOUND)
    no_unit = client.get_string_details(KEY, "v0", EvaluationContext())
    assert (no_unit.value, no_unit.error_code) == ("v0", ErrorCode.TARGETING_KEY_MISSING)
    bad_unit = client.get_string_details(KEY, "v0", EvaluationContext(targeting_key="x" * 300))
    assert (bad_unit.value, bad_unit.error_code) == ("v0", ErrorCode.INVALID_CONTEXT)
    boolean = client.get_boolean_details(KEY, False, EvaluationContext(targeting_key="u"))
    assert (boolean.value, boolean.error_code) == (False, ErrorCode.TYPE_MISMATCH)


def test_track_records_the_event(provider: tuple[AbkitProvider, Runtime]) -> None:
    abkit, runtime = provider
    client = api.get_client()
    client.track("revenue", EvaluationContext(targeting_key="buyer"), TrackingEventDetails(9.5))
    client.track("conversion", EvaluationContext(targeting_key="buyer"))
    assert abkit.client.flush(10) and runtime.flush(10)
    assert isinstance(runtime.store, SqlStore)
    with runtime.store.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT metric, value FROM events WHERE unit_id = 'buyer' ORDER BY metric")
        ).all()
    assert [tuple(r) for r in rows] == [("conversion", 1.0), ("revenue", 9.5)]


def test_a_provider_needs_a_client_or_a_target() -> None:
    with pytest.raises(ValueError, match="either a LocalClient or a target"):
        AbkitProvider()
