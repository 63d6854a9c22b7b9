"""Erasure, pseudonymisation and retention, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from abkit.core.hashing import pseudonym
from abkit.core.model import Event, Exposure
from abkit.core.spec import experiment_from_dict
from abkit.errors import ConflictError
from abkit.services.experiments import ExperimentService
from abkit.services.privacy import PrivacyService
from abkit.store.schema import Base
from abkit.store.sql import SqlStore
from tests.helpers import EXPERIMENT, T0, Clock

KEY = b"a secret pseudonymisation key"


def everything(store: SqlStore) -> str:
    """Every value of every row of every table, as one string (the erasure check reads it)."""
    dump = []
    with store.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                dump.append(repr(tuple(row)))
    return "\n".join(dump)


def test_forget_leaves_no_trace_of_the_unit(sql_url: str) -> None:
    store = SqlStore.from_url(sql_url)
    clock = Clock(T0)
    doc = {**EXPERIMENT, "overrides": {"alice": "candidate", "qa": "control"}}
    ExperimentService(store, clock).apply(experiment_from_dict(doc), actor="ada", start=True)
    hashed = pseudonym(KEY, "alice")
    with store.transaction() as tx:
        tx.exposures.add(
            [
                Exposure(
                    "ranker-v2", "alice", "control", "ranker-v1", "c" * 16, T0
                ),  # before the key
                Exposure("ranker-v2", hashed, "control", "ranker-v1", "c" * 16, T0),
                Exposure("ranker-v2", "bob", "candidate", "ranker-v2", "c" * 16, T0),
            ]
        )
        tx.events.add(
            [
                Event("e1", "alice", "conversion", 1.0, T0),
                Event("e2", hashed, "revenue", 5.0, T0),
                Event("e3", "bob", "conversion", 1.0, T0),
            ]
        )
    dump = everything(store)
    assert "alice" in dump and hashed in dump
    clock.value = T0 + timedelta(hours=1)
    erasure = PrivacyService(store, clock, lambda u: pseudonym(KEY, u)).forget("alice", actor="dpo")
    assert (erasure.exposures, erasure.events, erasure.overrides) == (2, 2, 1)
    dump = everything(store)
    assert "alice" not in dump and hashed not in dump
    assert "bob" in dump and "'qa'" in dump  # nobody else is touched
    with store.transaction() as tx:
        (entry,) = tx.audit.list()
        overrides = dict(tx.experiments.get("ranker-v2").experiment.overrides)
    assert (entry.action, entry.actor) == ("forget", "dpo")
    assert entry.detail == {"exposures": 2, "events": 2, "overrides": 1}
    assert overrides == {"qa": "control"}
    store.close()


def test_prune_keeps_running_experiments_safe(sql_url: str) -> None:
    store = SqlStore.from_url(sql_url)
    clock = Clock(T0)
    experiments = ExperimentService(store, clock)
    experiments.apply(experiment_from_dict(EXPERIMENT), actor="ada", start=True)
    old = {**EXPERIMENT, "key": "old-test"}
    experiments.apply(experiment_from_dict(old), actor="ada")  # a draft: not running
    with store.transaction() as tx:
        tx.exposures.add(
            [
                Exposure("ranker-v2", "u1", "control", "ranker-v1", "c" * 16, T0),
                Exposure("old-test", "u2", "control", "ranker-v1", "c" * 16, T0),
                Exposure(
                    "old-test", "u3", "control", "ranker-v1", "c" * 16, T0 + timedelta(days=300)
                ),
            ]
        )
        tx.events.add(
            [
                Event("old", "u1", "conversion", 1.0, T0 + timedelta(days=1)),
                Event("new", "u1", "conversion", 1.0, T0 + timedelta(days=250)),
            ]
        )
    clock.value = T0 + timedelta(days=400)
    privacy = PrivacyService(store, clock)
    with pytest.raises(ConflictError, match="ranker-v2"):
        privacy.prune(timedelta(days=180), actor="ops")
    pruning = privacy.prune(timedelta(days=180), actor="ops", include_running=True)
    assert (pruning.exposures, pruning.events) == (2, 1)
    with store.transaction() as tx:
        assert tx.events.get("new") is not None and tx.events.get("old") is None
        assert tx.exposures.get("old-test", "u3") is not None
        assert tx.audit.list()[-1].detail["exposures"] == 2
    store.close()


def test_pseudonymised_ids_are_stored_but_assignment_uses_the_raw_id(sqlite_url: str) -> None:
    import shutil

    from opentelemetry.sdk.trace import TracerProvider

    from abkit.client import Client
    from abkit.config import Settings
    from abkit.infra.telemetry import Telemetry
    from abkit.rpc.server import build_server
    from abkit.runtime import Runtime

    plain_db = sqlite_url.removeprefix("sqlite:///")
    hmac_db = plain_db.replace(".db", "-hmac.db")
    shutil.copy(plain_db, hmac_db)  # two fresh, migrated stores
    arms = {}
    for key, path in (("", plain_db), (KEY.decode(), hmac_db)):
        url = f"sqlite:///{path}"
        settings = Settings(database_url=url, writer_flush_seconds=0.02, unit_id_key=key)
        runtime = Runtime(settings, SqlStore.from_url(url))
        runtime.experiments.apply(experiment_from_dict(EXPERIMENT), actor="t", start=True)
        runtime.start()
        server = build_server(settings, runtime, Telemetry(TracerProvider()), address="127.0.0.1:0")
        server.start()
        with Client(server.address, timeout=3) as client:
            arms[key] = [
                client.assign(f"user-{i}", "ranker-v2", default="x").arm_key for i in range(50)
            ]
            assert client.track("user-7", "conversion", event_id="ev-7")
        assert runtime.flush(5)
        server.stop(grace=1)
        runtime.close()
        store = SqlStore.from_url(url)
        with store.transaction() as tx:
            event = tx.events.get("ev-7")
            exposure = tx.exposures.get("ranker-v2", pseudonym(KEY, "user-7") if key else "user-7")
        dump = everything(store)
        store.close()
        assert exposure is not None and event is not None
        if key:
            assert event.unit_id == pseudonym(KEY, "user-7")
            assert "user-7" not in dump  # the raw id is stored nowhere
    assert arms[""] == arms[KEY.decode()]  # pseudonymisation moves nobody between arms
