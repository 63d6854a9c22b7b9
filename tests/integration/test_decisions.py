"""The decision worker on real stores: looks, the audit trail, manual controls, exactly-once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from abkit.errors import ConflictError
from abkit.infra.notify import WebhookNotifier
from abkit.ports import Store
from abkit.services.decisions import DecisionService
from abkit.services.statistics import StatisticsService
from abkit.store.sql import SqlStore
from tests.helpers import POLICY, T0, Clock, setup, traffic


def test_a_winning_candidate_is_promoted_with_a_full_audit(store: Store) -> None:
    clock = Clock(T0 + timedelta(hours=2))
    setup(store, clock)
    traffic(store, units=300, lift=0.08, seed=3)
    decisions = DecisionService(store, clock)
    first = decisions.look("ranker-v2")
    assert first is not None and first.record.action == "continue" and first.record.look == 1
    traffic(store, units=19700, lift=0.08, seed=4, start=300)
    clock.value += timedelta(minutes=1)
    outcome = decisions.look("ranker-v2")
    assert outcome is not None
    record = outcome.record
    assert (record.action, record.arm_key, record.look, record.actor) == (
        "promote",
        "candidate",
        2,
        "worker",
    )
    snapshot = record.snapshot
    assert snapshot["units"] == {"control": 10000, "candidate": 10000}
    primary = next(c for c in snapshot["comparisons"] if c["role"] == "primary")
    assert primary["better"] and primary["ci_low"] > 0.01
    assert snapshot["policy"]["primary"]["metric"] == "conversion"
    assert snapshot["config_checksum"] == record.config_checksum
    assert snapshot["state"]["monitors"]["conversion/candidate"]["looks"] == 2
    with store.transaction() as tx:
        exp = tx.experiments.get("ranker-v2").experiment
        live = tx.models.live("ranker")
        versions = {v.version: v.status for v in tx.models.versions("ranker")}
        history = [(d.action, d.look) for d in tx.decisions.list("ranker-v2")]
    assert (exp.status.value, exp.rollout_arm) == ("concluded", "candidate")
    assert live is not None and live.version == "ranker-v2"
    assert versions == {"ranker-v1": "previous", "ranker-v2": "live"}
    assert history == [("create+start", None), ("continue", 1), ("promote", 2)]
    # Sticky: a concluded experiment is never looked at again.
    clock.value += timedelta(hours=1)
    assert decisions.due() == [] and decisions.look("ranker-v2") is None


def test_a_harmful_candidate_is_rolled_back(store: Store) -> None:
    clock = Clock(T0 + timedelta(hours=2))
    setup(store, clock)
    traffic(store, units=4000, lift=0.02, latency_harm=0.2, seed=5)
    outcome = DecisionService(store, clock).look("ranker-v2")
    assert outcome is not None and outcome.record.action == "rollback"
    assert "guardrail latency_ms is harmed" in outcome.record.reason
    with store.transaction() as tx:
        exp = tx.experiments.get("ranker-v2").experiment
        live = tx.models.live("ranker")
    assert exp.rollout_arm == "control" and live is not None and live.version == "ranker-v1"


def test_due_respects_the_look_interval(store: Store) -> None:
    clock = Clock(T0)
    setup(store, clock)
    decisions = DecisionService(store, clock)
    assert decisions.due() == ["ranker-v2"]
    assert decisions.look("ranker-v2") is not None
    clock.value += timedelta(seconds=30)
    assert decisions.due() == []
    clock.value += timedelta(seconds=31)
    assert decisions.due() == ["ranker-v2"]


def test_a_store_failure_during_a_look_is_a_recorded_hold_never_a_promote(sql_url: str) -> None:
    store = SqlStore.from_url(sql_url)
    clock = Clock(T0 + timedelta(hours=2))
    setup(store, clock)
    traffic(store, units=6000, lift=0.1, seed=6)  # a clear winner...
    with store.engine.begin() as conn:  # ...but the events table is gone
        conn.exec_driver_sql("ALTER TABLE events RENAME TO events_away")
    try:
        outcome = DecisionService(store, clock).look("ranker-v2")
    finally:
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE events_away RENAME TO events")
    assert outcome is not None and outcome.record.action == "hold"
    assert "migrate it to the latest revision" in outcome.record.reason
    assert outcome.record.snapshot["error"]
    with store.transaction() as tx:
        exp = tx.experiments.get("ranker-v2").experiment
        live = tx.models.live("ranker")
    assert exp.status.value == "running" and live is not None and live.version == "ranker-v1"
    store.close()


def test_manual_controls_are_audited_and_reversible(store: Store) -> None:
    clock = Clock(T0)
    setup(store, clock)
    decisions = DecisionService(store, clock)
    promoted = decisions.promote("ranker-v2", "candidate", actor="bob", reason="launch review")
    assert (promoted.action, promoted.actor, promoted.reason) == ("promote", "bob", "launch review")
    with store.transaction() as tx:
        assert tx.models.live("ranker").version == "ranker-v2"  # type: ignore[union-attr]
    with pytest.raises(ConflictError, match="already rolled out"):
        decisions.promote("ranker-v2", "candidate", actor="bob")
    rolled = decisions.rollback("ranker-v2", actor="carol")
    assert (rolled.action, rolled.arm_key, rolled.actor) == ("rollback", "control", "carol")
    with store.transaction() as tx:
        versions = {v.version: v.status for v in tx.models.versions("ranker")}
        exp = tx.experiments.get("ranker-v2").experiment
    assert versions == {"ranker-v1": "live", "ranker-v2": "retired"}
    assert exp.rollout_arm == "control"
    with pytest.raises(ConflictError, match="already serves its control"):
        decisions.rollback("ranker-v2", actor="carol")
    with store.transaction() as tx:
        trail = [(d.action, d.actor) for d in tx.decisions.list("ranker-v2")]
    assert trail == [("create+start", "ada"), ("promote", "bob"), ("rollback", "carol")]


def test_two_workers_racing_on_postgresql_promote_exactly_once(pg_url: str) -> None:
    setup_store = SqlStore.from_url(pg_url)
    clock = Clock(T0 + timedelta(hours=2))
    setup(setup_store, clock)
    traffic(setup_store, units=8000, lift=0.1, seed=7)
    setup_store.close()
    stores = [SqlStore.from_url(pg_url) for _ in range(2)]
    services = [DecisionService(s, clock) for s in stores]
    barrier = threading.Barrier(2)
    results: list[Any] = [None, None]

    def race(i: int) -> None:
        barrier.wait()
        results[i] = services[i].look("ranker-v2")

    for _ in range(3):  # later rounds find the experiment concluded and do nothing
        threads = [threading.Thread(target=race, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        clock.value += timedelta(minutes=5)
    with stores[0].transaction() as tx:
        history = tx.decisions.list("ranker-v2")
        live = [v for v in tx.models.versions("ranker") if v.status == "live"]
    assert [d.action for d in history].count("promote") == 1
    assert [d.look for d in history if d.look is not None] == [1]
    assert [v.version for v in live] == ["ranker-v2"]
    for s in stores:
        s.close()


@pytest.fixture
def webhook_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    failures = {"left": 2}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if failures["left"] > 0:
                failures["left"] -= 1
                self.send_response(503)
                self.end_headers()
                return
            received.append(body)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


def test_webhook_is_retried_and_never_blocks_the_worker(
    sqlite_url: str, webhook_server: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = webhook_server
    store = SqlStore.from_url(sqlite_url)
    clock = Clock(T0 + timedelta(hours=2))
    setup(store, clock, {**POLICY, "webhook": url})
    traffic(store, units=8000, lift=0.1, seed=8)
    notifier = WebhookNotifier(first_delay=0.05)
    decisions = DecisionService(store, clock, listeners=(notifier,))
    started = time.perf_counter()
    outcome = decisions.look("ranker-v2")
    assert outcome is not None and outcome.record.action == "promote"
    assert time.perf_counter() - started < 5  # delivery (with its retries) is not on this path
    assert notifier.flush(10)
    assert notifier.sent == 1 and notifier.failed == 0
    (body,) = received
    assert body["experiment"] == "ranker-v2" and body["action"] == "promote"
    assert body["model_version"] == "ranker-v2" and body["look"] == 1
    notifier.close()
    store.close()


def test_each_look_is_a_span_with_the_decision_as_an_event(sqlite_url: str) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from abkit.infra.instruments import WorkerMetrics
    from abkit.worker import Worker

    store = SqlStore.from_url(sqlite_url)
    clock = Clock(T0 + timedelta(hours=2))
    setup(store, clock)
    traffic(store, units=8000, lift=0.1, seed=12)
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    worker = Worker(
        DecisionService(store, clock),
        tracer_provider.get_tracer("test"),
        metrics=WorkerMetrics(meters.get_meter("test")),
    )
    outcomes = worker.run_once()
    assert [o.record.action for o in outcomes] == ["promote"]
    (span,) = [s for s in spans.get_finished_spans() if s.name == "abkit.look"]
    (event,) = span.events
    assert event.name == "abkit.decision"
    assert event.attributes is not None
    assert (event.attributes["abkit.action"], event.attributes["abkit.arm"]) == (
        "promote",
        "candidate",
    )
    assert "conversion improved" in str(event.attributes["abkit.reason"])
    data = reader.get_metrics_data()
    assert data is not None
    looks = [
        p
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "abkit.looks"
        for p in m.data.data_points
    ]
    assert [(p.attributes["abkit.action"], p.value) for p in looks] == [("promote", 1)]
    store.close()
    tracer_provider.shutdown()
    meters.shutdown()


def test_a_hold_carries_the_monitor_state_to_the_next_look(sql_url: str) -> None:
    """A group-sequential design must not restart (and spend its alpha again) after a hold."""
    store = SqlStore.from_url(sql_url)
    clock = Clock(T0 + timedelta(hours=2))
    setup(store, clock, {**POLICY, "mode": "group_sequential", "max_units": 40_000})
    traffic(store, units=2000, lift=0.0, seed=11)
    decisions = DecisionService(store, clock)
    first = decisions.look("ranker-v2")
    assert first is not None and first.record.action == "continue"
    state = first.record.snapshot["state"]
    assert state["group_sequential"]["conversion/candidate"]["fractions"]
    with store.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE analysis_days RENAME TO days_away")  # the state is gone
    clock.value += timedelta(minutes=2)
    try:
        held = decisions.look("ranker-v2")
    finally:
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE days_away RENAME TO analysis_days")
    assert held is not None and held.record.action == "hold"
    assert held.record.snapshot["state"] == state
    traffic(store, units=2000, lift=0.0, seed=12, start=2000)
    clock.value += timedelta(minutes=2)
    third = decisions.look("ranker-v2")
    assert third is not None and third.analysis is not None
    fractions = third.analysis.state.group_sequential["conversion/candidate"].fractions
    assert len(fractions) == 2  # the first look's fraction, then this one: the design went on
    store.close()


def test_a_stored_policy_that_no_longer_validates_is_a_recorded_hold(sql_url: str) -> None:
    store = SqlStore.from_url(sql_url)
    clock = Clock(T0 + timedelta(hours=2))
    setup(store, clock)
    with store.engine.begin() as conn:  # e.g. written by another version, or edited by hand
        conn.exec_driver_sql(
            """UPDATE experiments SET policy = '{"primary": {"metric": "conversion"}}'"""
        )
    with store.transaction() as tx:
        record = tx.experiments.get("ranker-v2")  # one bad row does not stop the store
    assert record.policy is None and record.policy_error is not None
    assert "policy.primary.kind" in record.policy_error
    decisions = DecisionService(store, clock)
    assert decisions.due() == ["ranker-v2"]
    outcome = decisions.look("ranker-v2")
    assert outcome is not None and outcome.record.action == "hold"
    assert "policy.primary.kind: is required" in outcome.record.reason
    store.close()


def test_a_drifted_state_is_a_recorded_hold_then_rebuilt(sql_url: str) -> None:
    """Reconciliation: maintained statistics that disagree with the full recomputation are
    never decided on; the look holds, says why, and the next look starts from every row."""
    store = SqlStore.from_url(sql_url)
    clock = Clock(T0 + timedelta(hours=2))
    setup(store, clock)
    traffic(store, units=2000, lift=0.0, seed=21)
    decisions = DecisionService(store, clock, reconcile_every=2)
    first = decisions.look("ranker-v2")
    assert first is not None and first.record.action == "continue"
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE analysis_days SET n = n + 7")
    clock.value += timedelta(minutes=2)
    held = decisions.look("ranker-v2")  # look 2: reconciled
    assert held is not None and held.record.action == "hold"
    assert "differ from a full recomputation" in held.record.reason
    assert "n: " in held.record.reason
    clock.value += timedelta(minutes=2)
    again = decisions.look("ranker-v2")
    assert again is not None and again.record.action == "continue"
    assert again.analysis is not None and sum(again.analysis.units.values()) == 2000
    store.close()


def test_a_promotion_on_drifted_statistics_is_held_and_keeps_the_monitor_state(
    sql_url: str,
) -> None:
    """Before any decision that changes the allocation the statistics are recomputed; if the
    maintained ones disagree the look holds, and nothing computed from them is kept."""
    store = SqlStore.from_url(sql_url)
    clock = Clock(T0 + timedelta(hours=2))
    setup(store, clock)
    traffic(store, units=4000, lift=0.0, seed=31)  # no effect at all
    with store.transaction() as tx:
        metrics = tx.experiments.get("ranker-v2").policy.metrics  # type: ignore[union-attr]
    StatisticsService(store, clock).refresh("ranker-v2", metrics)  # the state, before any look
    with store.engine.begin() as conn:  # the state now shows a large win for the candidate
        conn.exec_driver_sql(
            "UPDATE analysis_days SET s = s + 300, ss = ss + 300 WHERE arm_key = 'candidate' "
            "AND metric_key IN (SELECT metric_key FROM analysis_watermarks "
            "WHERE metric->>'name' = 'conversion')"
            if store.engine.dialect.name == "postgresql"
            else "UPDATE analysis_days SET s = s + 300, ss = ss + 300 WHERE arm_key = "
            "'candidate' AND metric_key IN (SELECT metric_key FROM analysis_watermarks "
            "WHERE json_extract(metric, '$.name') = 'conversion')"
        )
    decisions = DecisionService(store, clock, reconcile_every=0)  # only before decisions
    held = decisions.look("ranker-v2")
    assert held is not None and held.record.action == "hold", held.record.reason
    assert "differ from a full recomputation" in held.record.reason
    assert held.record.snapshot["state"]["monitors"] == {}  # no monitor state from bad numbers
    with store.transaction() as tx:
        assert tx.experiments.get("ranker-v2").experiment.status.value == "running"
    clock.value += timedelta(minutes=2)
    again = decisions.look("ranker-v2")  # rebuilt from every row: no effect, no promotion
    assert again is not None and again.record.action == "continue"
    store.close()
