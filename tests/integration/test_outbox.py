"""The MLflow alias change is part of the decision: recorded with it, carried out until done,
exactly once -- on every store, with the registry's in-memory twin (test_mlflow_registry.py runs
the same story against a real MLflow server)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from abkit.config import Settings
from abkit.core.aliases import AliasNames
from abkit.core.policy_document import policy_from_dict
from abkit.core.spec import experiment_from_dict
from abkit.errors import ConflictError, ValidationError
from abkit.infra.registry_memory import MemoryRegistry
from abkit.ports import Store
from abkit.runtime import Runtime
from abkit.services.decisions import DecisionService
from abkit.services.experiments import ExperimentService
from abkit.services.registry import RegistrySync, VersionChecker
from abkit.worker import Worker
from tests.helpers import EXPERIMENT, POLICY, T0, Clock, traffic

KEY = "ranker-v2"
NAMES = AliasNames()
ARMS = [
    {"key": "control", "model_version": "models:/ranker/1", "weight": 0.5, "control": True},
    {"key": "candidate", "model_version": "models:/ranker/2", "weight": 0.5},
]


def registry_with_champion() -> MemoryRegistry:
    registry = MemoryRegistry()
    for version in ("1", "2", "3"):
        registry.add_version("ranker", version)
    registry.set_alias("ranker", "champion", "1")
    registry.writes.clear()
    return registry


def start(store: Store, clock: Clock, registry: MemoryRegistry, **changes: Any) -> None:
    service = ExperimentService(store, clock, check_versions=VersionChecker(registry))
    doc = {**EXPERIMENT, "arms": ARMS, **changes}
    service.apply(
        experiment_from_dict(doc), actor="ada", policy=policy_from_dict(POLICY), start=True
    )


def sync(store: Store, clock: Clock, registry: MemoryRegistry, owner: str = "") -> RegistrySync:
    return RegistrySync(store, clock, registry, owner=owner, lease_seconds=60)


def registry_entries(store: Store) -> list[Any]:
    with store.transaction() as tx:
        return [d for d in tx.decisions.list(KEY) if d.action == "registry"]


def test_a_promotion_and_a_manual_rollback_move_the_aliases_and_audit_them(store: Store) -> None:
    clock, registry = Clock(T0 + timedelta(hours=2)), registry_with_champion()
    start(store, clock, registry)
    traffic(store, units=8000, lift=0.1, seed=8)
    decisions = DecisionService(store, clock, aliases=NAMES)
    outcome = decisions.look(KEY)
    assert outcome is not None and outcome.record.action == "promote"
    with store.transaction() as tx:  # recorded with the decision, nothing moved yet
        (item,) = tx.outbox.pending(KEY)
    assert item.decision_id == outcome.record.id and item.key == "ranker"
    assert registry.aliases("ranker") == {"champion": "1"}

    report = sync(store, clock, registry).dispatch()
    assert report.done == (item.id,) and report.failed == ()
    assert registry.aliases("ranker") == {"champion": "2", "previous-champion": "1"}
    assert registry.tags("ranker", "2") == {
        "abkit.experiment": KEY, "abkit.arm": "candidate", "abkit.decision": "promote",
        "abkit.look": "1", "abkit.rolled_out": "true",
    }  # fmt: skip
    (entry,) = registry_entries(store)
    assert entry.reason.startswith("MLflow champion → models:/ranker/2 (was models:/ranker/1)")
    assert entry.snapshot["before"] == {"champion": "1", "previous-champion": None}
    assert entry.actor == "outbox" and entry.look is None

    clock.value += timedelta(minutes=5)
    decisions.rollback(KEY, actor="carol")
    assert sync(store, clock, registry).dispatch().failed == ()
    assert registry.aliases("ranker") == {"champion": "1"}  # exactly as before the promotion
    assert registry.tags("ranker", "2")["abkit.decision"] == "rollback"
    assert registry.tags("ranker", "1")["abkit.rolled_out"] == "true"
    with store.transaction() as tx:
        assert tx.outbox.pending() == []
        trail = [d.action for d in tx.decisions.list(KEY)]
    assert trail == ["create+start", "promote", "registry", "rollback", "registry"]


def test_an_automatic_rollback_leaves_the_champion_and_tags_the_candidate(store: Store) -> None:
    clock, registry = Clock(T0 + timedelta(hours=2)), registry_with_champion()
    start(store, clock, registry)
    traffic(store, units=4000, lift=0.02, latency_harm=0.2, seed=5)
    outcome = DecisionService(store, clock, aliases=NAMES).look(KEY)
    assert outcome is not None and outcome.record.action == "rollback"
    assert sync(store, clock, registry).dispatch().failed == ()
    assert registry.aliases("ranker") == {"champion": "1"}
    assert registry.tags("ranker", "2")["abkit.decision"] == "rollback"
    assert [w[0] for w in registry.writes] == ["set_tag"] * 10


def test_an_unreachable_registry_is_retried_with_back_off_until_done(store: Store) -> None:
    clock, registry = Clock(T0), registry_with_champion()
    start(store, clock, registry)
    decisions = DecisionService(store, clock, aliases=NAMES)
    decisions.promote(KEY, "candidate", actor="bob")
    registry.available = False
    dispatcher = sync(store, clock, registry)
    waits = []
    for attempt in range(1, 5):
        report = dispatcher.dispatch()
        assert len(report.failed) == 1 and "unavailable" in report.failed[0][1]
        (pending,) = dispatcher.pending(KEY)
        assert pending.attempts == attempt and "unavailable" in (pending.last_error or "")
        assert (
            pending.description == "champion → models:/ranker/2; tag models:/ranker/1, "
            "models:/ranker/2 abkit.decision=promote"
        )
        assert dispatcher.dispatch().waiting == 1  # not due yet: nothing is tried
        waits.append((pending.next_attempt_at - clock.value).total_seconds())
        clock.value = pending.next_attempt_at
    assert waits == [1, 2, 4, 8]
    assert registry.writes == []
    registry.available = True
    assert len(dispatcher.dispatch().done) == 1
    assert registry.aliases("ranker") == {"champion": "2", "previous-champion": "1"}
    (entry,) = registry_entries(store)
    assert entry.snapshot["attempts"] == 5 and "done at attempt 5" in entry.reason
    assert dispatcher.pending() == []


def test_a_crash_after_the_writes_never_moves_an_alias_twice(store: Store) -> None:
    """The dispatcher dies after moving the aliases, before recording it: another one takes the
    item over when the lease ends, and computes the same writes from the stored observation."""
    clock, registry = Clock(T0), registry_with_champion()
    start(store, clock, registry)
    DecisionService(store, clock, aliases=NAMES).promote(KEY, "candidate", actor="bob")

    class Crash(Exception):
        pass

    crashing = sync(store, clock, registry, owner="crashing")

    def die(*_: object) -> None:
        raise Crash

    crashing._complete = die  # type: ignore[method-assign]
    with pytest.raises(Crash):
        crashing.dispatch()
    assert registry.aliases("ranker") == {"champion": "2", "previous-champion": "1"}
    other = sync(store, clock, registry, owner="other")
    assert other.dispatch().waiting == 1  # still held by the crashed dispatcher
    clock.value += timedelta(seconds=61)
    assert len(other.dispatch().done) == 1
    # Re-reading the aliases would have seen champion 2 and made it "previous" too.
    assert registry.aliases("ranker") == {"champion": "2", "previous-champion": "1"}
    (entry,) = registry_entries(store)
    assert entry.snapshot["before"] == {"champion": "1", "previous-champion": None}
    assert entry.snapshot["attempts"] == 2


def test_a_rollback_waits_for_the_promotion_it_undoes(store: Store) -> None:
    clock, registry = Clock(T0), registry_with_champion()
    start(store, clock, registry)
    decisions = DecisionService(store, clock, aliases=NAMES)
    registry.available = False
    decisions.promote(KEY, "candidate", actor="bob")
    dispatcher = sync(store, clock, registry)
    assert len(dispatcher.dispatch().failed) == 1
    decisions.rollback(KEY, actor="carol")
    clock.value += timedelta(seconds=1)
    registry.fail_after(3)  # the promotion's first writes go through, then MLflow fails again
    registry.available = True
    report = dispatcher.dispatch()
    assert len(report.failed) == 1 and report.waiting == 1  # the rollback waits behind it
    clock.value += timedelta(seconds=10)
    registry.fail_after(None)
    assert len(dispatcher.dispatch().done) == 2
    assert registry.aliases("ranker") == {"champion": "1"}
    assert [e.snapshot["action"] for e in registry_entries(store)] == ["promote", "rollback"]


def test_a_rollback_leaves_a_champion_another_experiment_moved(store: Store) -> None:
    clock, registry = Clock(T0), registry_with_champion()
    start(store, clock, registry)
    decisions = DecisionService(store, clock, aliases=NAMES)
    dispatcher = sync(store, clock, registry)
    decisions.promote(KEY, "candidate", actor="bob")
    dispatcher.dispatch()
    registry.set_alias("ranker", "previous-champion", "2")  # someone promoted version 3
    registry.set_alias("ranker", "champion", "3")
    decisions.rollback(KEY, actor="carol")
    dispatcher.dispatch()
    assert registry.aliases("ranker") == {"champion": "3", "previous-champion": "2"}
    last = registry_entries(store)[-1]
    assert "champion points to 3 now, not to 2" in last.reason


def test_decision_and_outbox_item_are_one_transaction(store: Store) -> None:
    clock, registry = Clock(T0), registry_with_champion()
    start(store, clock, registry)
    decisions = DecisionService(store, clock, aliases=NAMES)
    decisions.promote(KEY, "candidate", actor="bob")
    with pytest.raises(ConflictError):  # refused: nothing recorded, nothing queued
        decisions.promote(KEY, "candidate", actor="bob")
    with store.transaction() as tx:
        assert len(tx.outbox.pending()) == 1
    # Without MLflow versions, or without a registry configured, there is nothing to queue.
    plain = {**EXPERIMENT, "key": "plain", "arms": EXPERIMENT["arms"]}
    ExperimentService(store, clock).apply(experiment_from_dict(plain), actor="ada", start=True)
    decisions.promote("plain", "candidate", actor="bob")
    DecisionService(store, clock).rollback(KEY, actor="carol")
    with store.transaction() as tx:
        assert len(tx.outbox.pending()) == 1


def test_apply_refuses_versions_the_registry_does_not_have(store: Store) -> None:
    clock, registry = Clock(T0), registry_with_champion()
    service = ExperimentService(store, clock, check_versions=VersionChecker(registry))
    arms = [ARMS[0], {**ARMS[1], "model_version": "models:/ranker/9"}]
    doc = {**EXPERIMENT, "arms": arms}
    with pytest.raises(ValidationError) as error:
        service.apply(experiment_from_dict(doc), actor="ada")
    assert str(error.value) == (
        "arms[1].model_version: arm 'candidate': models:/ranker/9 is not in the model "
        "registry (in-memory registry); register that version first, or fix the URI"
    )
    moving = [ARMS[0], {**ARMS[1], "model_version": "models:/ranker@champion"}]
    with pytest.raises(ValidationError, match=r"arms\[1\]\.model_version: .*alias or a stage"):
        service.apply(experiment_from_dict({**EXPERIMENT, "arms": moving}), actor="ada")
    other = [ARMS[0], {**ARMS[1], "model_version": "models:/other/1"}]
    with pytest.raises(ValidationError, match="another registered model"):
        service.apply(experiment_from_dict({**EXPERIMENT, "arms": other}), actor="ada")
    with store.transaction() as tx:
        assert tx.experiments.list() == []
    service.apply(experiment_from_dict({**EXPERIMENT, "arms": ARMS}), actor="ada")
    # A version deleted later does not block re-applying the same arms.
    registry.available = False
    result = service.apply(experiment_from_dict({**EXPERIMENT, "arms": ARMS}), actor="ada")
    assert result.outcome == "unchanged"


def test_the_worker_dispatches_right_after_its_decision_and_the_page_shows_it(
    store: Store,
) -> None:
    clock, registry = Clock(T0 + timedelta(hours=2)), registry_with_champion()
    settings = Settings(database_url="sqlite://", spool_dir="off", actor="tester",
                        mlflow_tracking_uri="memory://")  # fmt: skip
    runtime = Runtime(settings, store, clock, registry=registry)
    try:
        runtime.experiments.apply(
            experiment_from_dict({**EXPERIMENT, "arms": ARMS}),
            actor="ada",
            policy=policy_from_dict(POLICY),
            start=True,
        )
        traffic(store, units=8000, lift=0.1, seed=8)
        registry.available = False
        from opentelemetry.trace import NoOpTracerProvider

        worker = Worker(runtime.decisions, NoOpTracerProvider().get_tracer("t"),
                        outbox=runtime.outbox)  # fmt: skip
        (outcome,) = worker.run_once()
        assert outcome.record.action == "promote"
        assert runtime.outbox.flush(10)  # the listener ran a pass right after the decision
        (pending,) = runtime.results.results(KEY).registry_pending
        assert pending.attempts == 1 and "unavailable" in (pending.last_error or "")

        from abkit.web import create_app

        client = create_app(settings, runtime, {"TESTING": True}).test_client()
        page = client.get(f"/experiments/{KEY}").text
        assert (
            "MLflow alias change pending (attempt 1, last error: the in-memory registry is "
            "marked unavailable; next try 2026-06-01 11:00:01 UTC): champion → models:/ranker/2"
        ) in page
        assert "champion → models:/ranker/2" in page
        (doc,) = client.get(f"/api/experiments/{KEY}/results").get_json()["registry_pending"]
        assert (doc["action"], doc["attempts"]) == ("promote", 1)
        registry.available = True
        clock.value += timedelta(seconds=1)
        runtime.outbox.kick()
        assert runtime.outbox.flush(10)
        assert registry.aliases("ranker") == {"champion": "2", "previous-champion": "1"}
        results = runtime.results.results(KEY)
        assert results.registry_pending == ()
        page = client.get(f"/experiments/{KEY}").text
        assert "alias change pending" not in page
        assert "MLflow champion → models:/ranker/2 (was models:/ranker/1)" in page
        assert "done at attempt 2" in page
    finally:
        runtime.close()


def test_a_tracking_uri_without_the_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from abkit.infra import mlflow_registry

    monkeypatch.setattr(mlflow_registry.importlib.util, "find_spec", lambda name: None)
    settings = Settings(database_url="sqlite://", mlflow_tracking_uri="http://mlflow:5000")
    with pytest.raises(ValidationError, match=r"ABKIT_MLFLOW_TRACKING_URI: .*abkit\[mlflow\]"):
        mlflow_registry.open_registry(settings)
    assert mlflow_registry.open_registry(Settings(database_url="sqlite://")) is None
