"""One contract, three stores: the in-memory twin, SQLite and PostgreSQL must agree."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from abkit.core.model import Event, ExperimentStatus, Exposure
from abkit.core.policy_document import policy_from_dict
from abkit.core.spec import experiment_from_dict
from abkit.errors import ConflictError, NotFoundError
from abkit.ports import DecisionRecord, ExperimentRecord, Store

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)

DOC = {
    "key": "ranker-v2",
    "name": "Ränker «v2» <b>",
    "model": "ranker",
    "coverage": 0.5,
    "layer": {"key": "ranking", "start": 0.0, "end": 0.5},
    "holdout": {"key": "global", "fraction": 0.05},
    "targeting": {"all": [{"attr": "country", "in": ["US", "CA"]}, {"attr": "age", "gte": 18}]},
    "overrides": {"qa-1": "treatment"},
    "arms": [
        {"key": "control", "model_version": "ranker-v1", "weight": 0.5, "control": True},
        {"key": "treatment", "model_version": "ranker-v2", "weight": 0.5},
    ],
}


POLICY = policy_from_dict(
    {"primary": {"metric": "conversion", "kind": "binary"}, "alpha": 0.05, "ramp": [0.1, 1.0]}
)


def record(doc: dict[str, object] = DOC, **kwargs: object) -> ExperimentRecord:
    return ExperimentRecord(
        experiment_from_dict(doc),
        revision=0,
        created_at=T0,
        updated_at=T0,
        **kwargs,  # type: ignore[arg-type]
    )


def test_experiment_round_trip(store: Store) -> None:
    with store.transaction() as tx:
        saved = tx.experiments.save(record(policy=POLICY), expected_revision=None)
    assert saved.revision == 1
    with store.transaction() as tx:
        loaded = tx.experiments.get("ranker-v2")
        assert tx.experiments.find("nope") is None
        assert [r.key for r in tx.experiments.list()] == ["ranker-v2"]
    assert loaded == saved
    assert loaded.experiment.config_checksum == saved.experiment.config_checksum
    assert loaded.created_at == T0 and loaded.created_at.tzinfo is not None
    assert loaded.policy == POLICY


def test_create_twice_conflicts(store: Store) -> None:
    with store.transaction() as tx:
        tx.experiments.save(record(), expected_revision=None)
    with pytest.raises(ConflictError, match="already exists"), store.transaction() as tx:
        tx.experiments.save(record(), expected_revision=None)


def test_update_is_optimistic(store: Store) -> None:
    with store.transaction() as tx:
        first = tx.experiments.save(record(), expected_revision=None)
    running = replace(first, experiment=replace(first.experiment, status=ExperimentStatus.RUNNING))
    with store.transaction() as tx:
        second = tx.experiments.save(running, expected_revision=1)
    assert second.revision == 2
    with pytest.raises(ConflictError, match="changed concurrently"), store.transaction() as tx:
        tx.experiments.save(running, expected_revision=1)
    with store.transaction() as tx:
        assert tx.experiments.get("ranker-v2").experiment.status is ExperimentStatus.RUNNING


def test_get_unknown_is_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError, match="'nope'"), store.transaction() as tx:
        tx.experiments.get("nope")


def test_failed_transaction_rolls_back(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.experiments.save(record(), expected_revision=None)
        raise RuntimeError("boom")
    with store.transaction() as tx:
        assert tx.experiments.list() == []


def test_holdout_has_one_fraction(store: Store) -> None:
    with store.transaction() as tx:
        tx.experiments.save(record(), expected_revision=None)
    other = {**DOC, "key": "other", "layer": None, "holdout": {"key": "global", "fraction": 0.2}}
    with pytest.raises(ConflictError, match="holdout 'global'"), store.transaction() as tx:
        tx.experiments.save(record(other), expected_revision=None)


def _exposure(unit: str, arm: str = "control", at: datetime = T0, trace: str = "") -> Exposure:
    return Exposure("ranker-v2", unit, arm, f"m-{arm}", "0123456789abcdef", at, trace, "")


def test_first_exposure_wins(store: Store) -> None:
    with store.transaction() as tx:
        assert (
            tx.exposures.add([_exposure("u1", trace="a" * 32), _exposure("u2", "treatment")]) == 2
        )
    with store.transaction() as tx:
        # A later exposure of u1, even in the same batch as a new unit, keeps the first row.
        assert (
            tx.exposures.add(
                [_exposure("u1", "treatment", T0 + timedelta(hours=1)), _exposure("u3")]
            )
            == 1
        )
        assert tx.exposures.add([]) == 0
    with store.transaction() as tx:
        first = tx.exposures.get("ranker-v2", "u1")
        assert tx.exposures.get("ranker-v2", "nobody") is None
        assert tx.exposures.counts("ranker-v2") == {"control": 2, "treatment": 1}
        assert tx.exposures.counts("other") == {}
    assert first == _exposure("u1", trace="a" * 32)


def test_unicode_and_long_unit_ids_survive(store: Store) -> None:
    units = ["用户-十七", "👩‍💻", "x" * 256, "quote'\"", "<script>"]
    with store.transaction() as tx:
        assert tx.exposures.add([_exposure(u) for u in units]) == len(units)
    with store.transaction() as tx:
        for u in units:
            found = tx.exposures.get("ranker-v2", u)
            assert found is not None and found.unit_id == u


def test_events_are_idempotent_by_event_id(store: Store) -> None:
    events = [
        Event(f"e{i}", f"u{i % 3}", "conversion", float(i), T0 + timedelta(seconds=i))
        for i in range(10)
    ]
    with store.transaction() as tx:
        assert tx.events.add(events) == 10
    with store.transaction() as tx:
        assert tx.events.add([*events[5:], Event("e10", "u1", "revenue", 2.5, T0)]) == 1
    with store.transaction() as tx:
        assert tx.events.count() == 11
        assert tx.events.count("conversion") == 10
        assert tx.events.get("e3") == events[3]
        assert tx.events.get("missing") is None


def test_decisions_are_an_ordered_audit_trail(store: Store) -> None:
    with store.transaction() as tx:
        tx.experiments.save(record(), expected_revision=None)
        a = tx.decisions.add(
            DecisionRecord("ranker-v2", "start", "started by ada", "ada", "c" * 16, T0)
        )
        b = tx.decisions.add(
            DecisionRecord(
                "ranker-v2",
                "promote",
                "v2 wins",
                "worker",
                "c" * 16,
                T0 + timedelta(1),
                "treatment",
                {"n": [1, 2]},
            )
        )
    assert a.id is not None and b.id is not None and b.id > a.id
    with store.transaction() as tx:
        history = tx.decisions.list("ranker-v2")
    assert [d.action for d in history] == ["start", "promote"]
    assert history[1].snapshot == {"n": [1, 2]} and history[1].arm_key == "treatment"


def test_model_registry_has_at_most_one_live_version(store: Store) -> None:
    with store.transaction() as tx:
        tx.models.register("ranker", "v1", now=T0)
        tx.models.register(
            "ranker", "v2", now=T0 + timedelta(seconds=1), experiment_key="ranker-v2"
        )
        again = tx.models.register("ranker", "v1", now=T0 + timedelta(days=1))
        assert again.created_at == T0  # registering twice keeps the original
        tx.models.set_status("ranker", "v1", "live", now=T0)
        assert tx.models.live("ranker") is not None
    with pytest.raises(ConflictError), store.transaction() as tx:
        tx.models.set_status("ranker", "v2", "live", now=T0)
    with store.transaction() as tx:
        live = tx.models.live("ranker")
        assert live is not None and live.version == "v1"
        tx.models.set_status("ranker", "v1", "previous", now=T0)
        tx.models.set_status("ranker", "v2", "live", now=T0)
        assert [(v.version, v.status) for v in tx.models.versions("ranker")] == [
            ("v1", "previous"),
            ("v2", "live"),
        ]
        assert tx.models.live("other") is None
    with pytest.raises(NotFoundError), store.transaction() as tx:
        tx.models.set_status("ranker", "v9", "live", now=T0)


def test_erasure_and_retention_primitives(store: Store) -> None:
    from abkit.ports import AuditEntry

    with store.transaction() as tx:
        tx.exposures.add(
            [
                _exposure("u1"),
                _exposure("u2", at=T0 + timedelta(days=10)),
                Exposure("other", "u1", "a", "m", "c" * 16, T0, "", ""),
            ]
        )
        tx.events.add(
            [
                Event("e1", "u1", "conversion", 1.0, T0),
                Event("e2", "u2", "conversion", 1.0, T0 + timedelta(days=10)),
            ]
        )
    with store.transaction() as tx:
        assert tx.exposures.delete_units(["u1", "nobody"]) == 2
        assert tx.events.delete_units(["u1"]) == 1
        assert tx.exposures.delete_before(T0 + timedelta(days=20), ["other"]) == 0
        assert tx.exposures.delete_before(T0 + timedelta(days=20), ["ranker-v2"]) == 1
        assert tx.events.delete_before(T0 + timedelta(days=5)) == 0
        assert tx.events.delete_before(T0 + timedelta(days=11)) == 1
        entry = tx.audit.add(AuditEntry("forget", "dpo", T0, {"events": 1}))
    assert entry.id is not None
    with store.transaction() as tx:
        assert tx.exposures.counts("ranker-v2") == {} and tx.events.count() == 0
        assert [(a.action, a.detail) for a in tx.audit.list()] == [("forget", {"events": 1})]


def test_large_batches_keep_the_same_contract(store: Store) -> None:
    # Batches from COPY_THRESHOLD rows take PostgreSQL's COPY path: same results required.
    from abkit.store.sql import COPY_THRESHOLD

    n = COPY_THRESHOLD * 3
    later = [_exposure(f"u{i}", "treatment", T0 + timedelta(hours=1)) for i in range(n)]
    earlier = [_exposure(f"u{i}", "control", T0) for i in range(n)]
    with store.transaction() as tx:
        tx.exposures.add(later[:10])  # already stored: must stay as they are
    with store.transaction() as tx:
        # Each unit twice in one batch, the later exposure first: the earlier one is kept.
        assert tx.exposures.add(later + earlier) == n - 10
        assert tx.exposures.add(later + earlier) == 0  # a replayed batch adds nothing
    with store.transaction() as tx:
        assert tx.exposures.counts("ranker-v2") == {"treatment": 10, "control": n - 10}
        assert tx.exposures.get("ranker-v2", "u20") == _exposure("u20", "control", T0)
    events = [Event(f"big-{i}", f"u{i}", "revenue", float(i), T0) for i in range(n)]
    with store.transaction() as tx:
        assert tx.events.add(events) == n
        assert tx.events.add([*events, Event("big-new", "u1", "revenue", 1.0, T0)]) == 1
    with store.transaction() as tx:
        assert tx.events.count("revenue") == n + 1
        assert tx.events.get("big-7") == events[7]


def test_large_batches_store_every_character_as_given(store: Store) -> None:
    """The COPY path writes text rows: backslashes, tabs, newlines and non-ASCII must survive."""
    from abkit.store.sql import COPY_THRESHOLD

    units = [f"user\\{i}\\n Ränker «{i}» 🚀 \\\\t" for i in range(COPY_THRESHOLD * 2)]
    version = "v2\twith\ttabs\nand a newline \\ and a backslash\r"
    exposures = [
        Exposure("ranker-v2", u, "treatment", version, "c" * 16, T0 + timedelta(microseconds=i))
        for i, u in enumerate(units)
    ]
    events = [
        Event(f"e.{i}:x-y_z", u, "revenue", 0.1 * i - 3.0, T0 + timedelta(seconds=i), "ab" * 16)
        for i, u in enumerate(units)
    ]
    with store.transaction() as tx:
        assert tx.exposures.add(exposures) == len(units)
        assert tx.events.add(events) == len(units)
    with store.transaction() as tx:
        assert [tx.exposures.get("ranker-v2", u) for u in units] == exposures
        assert [tx.events.get(e.event_id) for e in events] == events


def test_the_outbox_hands_each_change_to_one_dispatcher_at_a_time(store: Store) -> None:
    from abkit.ports import OutboxItem

    intent = {"model": "ranker", "champion": "2", "nested": {"ä": [1, None]}}
    with store.transaction() as tx:
        tx.experiments.save(record(), expected_revision=None)
        decision = tx.decisions.add(
            DecisionRecord("ranker-v2", "promote", "v2 wins", "worker", "c" * 16, T0, "treatment")
        )
        assert decision.id is not None
        first = tx.outbox.add(
            OutboxItem("ranker-v2", decision.id, "mlflow_aliases", "ranker", intent, T0, T0)
        )
        second = tx.outbox.add(
            OutboxItem("ranker-v2", decision.id, "mlflow_aliases", "other", {}, T0, T0)
        )
    assert first.id is not None and second.id is not None and second.id > first.id
    with store.transaction() as tx:
        assert [i.id for i in tx.outbox.pending()] == [first.id, second.id]
        assert tx.outbox.pending("nope") == []
        (stored, _) = tx.outbox.pending("ranker-v2")
    assert stored == first and stored.intent == intent and stored.observed is None
    assert (stored.attempts, stored.claimed_by, stored.last_error) == (0, None, None)

    lease = T0 + timedelta(minutes=5)
    with store.transaction() as tx:
        assert tx.outbox.claim(first.id, owner="b", now=T0 - timedelta(1), until=lease) is None
        claimed = tx.outbox.claim(first.id, owner="a", now=T0, until=lease)
        assert claimed is not None and (claimed.attempts, claimed.claimed_by) == (1, "a")
        assert claimed.claimed_until == lease
        # held by a until the lease ends: nobody else gets it, a's calls alone count
        soon = T0 + timedelta(minutes=1)
        assert tx.outbox.claim(first.id, owner="b", now=soon, until=lease) is None
        assert not tx.outbox.observe(first.id, owner="b", observed={"champion": "1"})
        assert tx.outbox.observe(first.id, owner="a", observed={"champion": "1", "x": None})
        assert not tx.outbox.observe(first.id, owner="a", observed={"champion": "9"})  # once
        assert not tx.outbox.release(first.id, owner="b", error="no", retry_at=T0, now=T0)
        retry = T0 + timedelta(seconds=2)
        assert tx.outbox.release(first.id, owner="a", error="MLflow away", retry_at=retry, now=T0)
    with store.transaction() as tx:
        (released, _) = tx.outbox.pending()
        assert released.observed == {"champion": "1", "x": None}
        assert (released.attempts, released.last_error, released.claimed_by) == (
            1, "MLflow away", None,
        )  # fmt: skip
        assert released.next_attempt_at == retry
        early = T0 + timedelta(seconds=1)
        assert tx.outbox.claim(first.id, owner="b", now=early, until=lease) is None
        again = tx.outbox.claim(first.id, owner="b", now=retry, until=lease)
        assert again is not None and again.attempts == 2
        # a lease that ran out may be taken over: the old holder's calls then fail
        later = lease + timedelta(seconds=1)
        taken = tx.outbox.claim(first.id, owner="c", now=later, until=later + timedelta(minutes=5))
        assert taken is not None and taken.attempts == 3
        assert not tx.outbox.remove(first.id, owner="b")
        assert tx.outbox.remove(first.id, owner="c")
        assert not tx.outbox.remove(first.id, owner="c")
        assert tx.outbox.claim(first.id, owner="c", now=later, until=later) is None
    with store.transaction() as tx:
        assert [i.id for i in tx.outbox.pending()] == [second.id]
