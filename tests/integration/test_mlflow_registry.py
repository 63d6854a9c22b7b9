"""The MLflow Model Registry follows the decisions: a real ``mlflow server``, the real MLflow
client, a real SQL store.

* the adapter keeps the port's contract, as its in-memory twin does;
* ``experiment apply`` refuses a version MLflow does not have;
* a promotion moves ``champion`` to the candidate's version (the replaced one keeps
  ``previous-champion``); an automatic rollback leaves it, a manual rollback after a promotion
  restores it;
* MLflow stopped during a promotion, then started: the alias ends correct, moved exactly once,
  the outbox item was tried more than once and is gone, and the audit trail says so once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from abkit.core.aliases import AliasNames
from abkit.core.policy_document import policy_from_dict
from abkit.core.spec import experiment_from_dict
from abkit.errors import NotFoundError, RegistryUnavailableError, ValidationError
from abkit.infra.mlflow_registry import MlflowRegistry
from abkit.infra.registry_memory import MemoryRegistry
from abkit.ports import ExternalModelRegistry, Store
from abkit.services.decisions import DecisionService
from abkit.services.experiments import ExperimentService
from abkit.services.registry import RegistrySync, VersionChecker
from abkit.store.sql import SqlStore
from tests.helpers import EXPERIMENT, POLICY, T0, Clock, traffic
from tests.mlflow_support import MlflowServer, aliases, register_versions, tags

KEY = "ranker-v2"
NAMES = AliasNames()


@pytest.fixture
def mlflow_url(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """The session's server, up; MLflow's client retries nothing and waits 10 s at most, so a
    stopped server fails an attempt at once (abkit's outbox does the retrying)."""
    if not mlflow_server.healthy():
        mlflow_server.start()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    return mlflow_server.url


@pytest.fixture
def sql_store(sqlite_url: str) -> Iterator[SqlStore]:
    store = SqlStore.from_url(sqlite_url)
    yield store
    store.close()


@pytest.fixture(params=["memory", "mlflow"])
def registry(request: pytest.FixtureRequest) -> tuple[ExternalModelRegistry, Callable[[], str]]:
    """Each registry and a way to make a model with versions 1 and 2 in it."""
    if request.param == "memory":
        memory = MemoryRegistry()
        names = iter(range(1000))

        def make_memory() -> str:
            name = f"ranker-{next(names)}"
            memory.add_version(name, "1")
            memory.add_version(name, "2")
            return name

        return memory, make_memory
    url = str(request.getfixturevalue("mlflow_url"))
    return MlflowRegistry(url), lambda: register_versions(url, 2)


def test_the_adapter_keeps_the_ports_contract(
    registry: tuple[ExternalModelRegistry, Callable[[], str]],
) -> None:
    adapter, make = registry
    name = make()
    assert adapter.version_exists(name, "2") and not adapter.version_exists(name, "3")
    assert not adapter.version_exists("no-such-model", "1")
    assert adapter.aliases(name) == {} and adapter.aliases("no-such-model") == {}
    adapter.set_alias(name, "champion", "1")
    adapter.set_alias(name, "champion", "2")  # an alias moves
    adapter.set_alias(name, "champion", "2")  # idempotent
    adapter.set_alias(name, "previous-champion", "1")
    assert adapter.aliases(name) == {"champion": "2", "previous-champion": "1"}
    adapter.delete_alias(name, "previous-champion")
    adapter.delete_alias(name, "previous-champion")  # idempotent
    adapter.delete_alias("no-such-model", "champion")
    assert adapter.aliases(name) == {"champion": "2"}
    adapter.set_tag(name, "2", "abkit.decision", "promote")
    adapter.set_tag(name, "2", "abkit.decision", "rollback")
    with pytest.raises(NotFoundError):
        adapter.set_alias(name, "champion", "9")
    with pytest.raises(NotFoundError):
        adapter.set_tag("no-such-model", "1", "k", "v")


def test_an_unreachable_mlflow_is_a_retryable_error(mlflow_url: str) -> None:
    from tests.mlflow_support import free_port

    adapter = MlflowRegistry(f"http://127.0.0.1:{free_port()}")  # nobody listens there
    with pytest.raises(
        RegistryUnavailableError, match=r"MLflow at http://127\.0\.0\.1:\d+ is unreachable"
    ):
        adapter.aliases("ranker")


def arms(name: str) -> list[dict[str, Any]]:
    return [
        {"key": "control", "model_version": f"models:/{name}/1", "weight": 0.5, "control": True},
        {"key": "candidate", "model_version": f"models:/{name}/2", "weight": 0.5},
    ]


def start(store: Store, clock: Clock, url: str, name: str) -> None:
    service = ExperimentService(store, clock, check_versions=VersionChecker(MlflowRegistry(url)))
    doc = {**EXPERIMENT, "arms": arms(name)}
    service.apply(
        experiment_from_dict(doc), actor="ada", policy=policy_from_dict(POLICY), start=True
    )


def trail(store: Store) -> list[Any]:
    with store.transaction() as tx:
        return [d for d in tx.decisions.list(KEY) if d.action == "registry"]


def test_apply_refuses_a_version_mlflow_does_not_have(sql_store: SqlStore, mlflow_url: str) -> None:
    name = register_versions(mlflow_url, 1)
    service = ExperimentService(
        sql_store, Clock(T0), check_versions=VersionChecker(MlflowRegistry(mlflow_url))
    )
    with pytest.raises(ValidationError) as error:
        service.apply(experiment_from_dict({**EXPERIMENT, "arms": arms(name)}), actor="ada")
    assert str(error.value).startswith(
        f"arms[1].model_version: arm 'candidate': models:/{name}/2 is not in the model registry "
        f"(MLflow at {mlflow_url})"
    )
    with sql_store.transaction() as tx:
        assert tx.experiments.list() == []


def test_promotion_moves_champion_and_rollbacks_restore_it(
    sql_store: SqlStore, mlflow_url: str
) -> None:
    name = register_versions(mlflow_url, 2)
    MlflowRegistry(mlflow_url).set_alias(name, "champion", "1")  # what serves today
    clock = Clock(T0 + timedelta(hours=2))
    start(sql_store, clock, mlflow_url, name)
    traffic(sql_store, units=8000, lift=0.1, seed=8)
    sync = RegistrySync(sql_store, clock, MlflowRegistry(mlflow_url))
    decisions = DecisionService(sql_store, clock, aliases=NAMES)

    outcome = decisions.look(KEY)
    assert outcome is not None and outcome.record.action == "promote"
    assert sync.dispatch().failed == ()
    assert aliases(mlflow_url, name) == {"champion": "2", "previous-champion": "1"}
    assert tags(mlflow_url, name, "2") == {
        "abkit.experiment": KEY, "abkit.arm": "candidate", "abkit.decision": "promote",
        "abkit.look": "1", "abkit.rolled_out": "true",
    }  # fmt: skip
    assert tags(mlflow_url, name, "1")["abkit.rolled_out"] == "false"

    clock.value += timedelta(minutes=10)
    decisions.rollback(KEY, actor="carol", reason="bad reviews")
    assert sync.dispatch().failed == ()
    assert aliases(mlflow_url, name) == {"champion": "1"}  # as before the promotion
    assert tags(mlflow_url, name, "2")["abkit.decision"] == "rollback"
    assert [e.snapshot["action"] for e in trail(sql_store)] == ["promote", "rollback"]
    assert sync.pending() == []


def test_an_automatic_rollback_keeps_the_champion(sql_store: SqlStore, mlflow_url: str) -> None:
    name = register_versions(mlflow_url, 2)
    MlflowRegistry(mlflow_url).set_alias(name, "champion", "1")
    clock = Clock(T0 + timedelta(hours=2))
    start(sql_store, clock, mlflow_url, name)
    traffic(sql_store, units=4000, lift=0.02, latency_harm=0.2, seed=5)
    outcome = DecisionService(sql_store, clock, aliases=NAMES).look(KEY)
    assert outcome is not None and outcome.record.action == "rollback"
    assert RegistrySync(sql_store, clock, MlflowRegistry(mlflow_url)).dispatch().failed == ()
    assert aliases(mlflow_url, name) == {"champion": "1"}
    assert tags(mlflow_url, name, "2")["abkit.decision"] == "rollback"
    (entry,) = trail(sql_store)
    assert entry.reason.startswith(f"MLflow aliases of {name} unchanged")


def test_mlflow_stopped_during_a_promotion_ends_correct_exactly_once(
    sql_store: SqlStore, mlflow_server: MlflowServer, mlflow_url: str
) -> None:
    name = register_versions(mlflow_url, 2)
    MlflowRegistry(mlflow_url).set_alias(name, "champion", "1")
    clock = Clock(T0 + timedelta(hours=2))
    start(sql_store, clock, mlflow_url, name)
    traffic(sql_store, units=8000, lift=0.1, seed=8)
    sync = RegistrySync(sql_store, clock, MlflowRegistry(mlflow_url), lease_seconds=60)

    mlflow_server.stop()
    try:
        outcome = DecisionService(sql_store, clock, aliases=NAMES).look(KEY)
        assert outcome is not None and outcome.record.action == "promote"  # recorded anyway
        report = sync.dispatch()
        assert len(report.failed) == 1 and "MLflow at" in report.failed[0][1]
        (pending,) = sync.pending(KEY)
        assert pending.attempts == 1 and pending.last_error
        assert pending.description.startswith(f"champion → models:/{name}/2")
    finally:
        mlflow_server.start()

    # Back up: a dispatcher dies after moving the aliases, before recording it ...
    clock.value += timedelta(seconds=1)
    crashing = RegistrySync(sql_store, clock, MlflowRegistry(mlflow_url), owner="crashing",
                            lease_seconds=60)  # fmt: skip

    class Crash(Exception):
        pass

    def die(*_: object) -> None:
        raise Crash

    crashing._complete = die  # type: ignore[method-assign]
    with pytest.raises(Crash):
        crashing.dispatch()
    assert aliases(mlflow_url, name) == {"champion": "2", "previous-champion": "1"}
    # ... and another takes the item over when the lease ends.
    clock.value += timedelta(seconds=61)
    assert len(sync.dispatch().done) == 1
    assert aliases(mlflow_url, name) == {"champion": "2", "previous-champion": "1"}
    (entry,) = trail(sql_store)  # one audit entry: the change was recorded once
    assert entry.snapshot["attempts"] == 3
    assert entry.snapshot["before"] == {"champion": "1", "previous-champion": None}
    assert entry.snapshot["after"] == {"champion": "2", "previous-champion": "1"}
    assert sync.pending() == []  # the outbox is empty


def test_a_manual_promotion_moves_the_alias_before_the_command_ends(
    sqlite_url: str, mlflow_url: str
) -> None:
    """Wired from the settings, as the CLI runs it: the runtime's decision listener carries the
    change out right after the decision; closing the runtime waits for it."""
    from abkit.config import Settings
    from abkit.runtime import Runtime

    name = register_versions(mlflow_url, 2)
    MlflowRegistry(mlflow_url).set_alias(name, "champion", "1")
    settings = Settings(
        database_url=sqlite_url,
        spool_dir="off",
        actor="bob",
        mlflow_tracking_uri=mlflow_url,
        mlflow_champion_alias="production",
        mlflow_previous_alias="production-before",
    )
    runtime = Runtime.from_settings(settings)
    try:
        doc = {**EXPERIMENT, "arms": arms(name)}
        runtime.experiments.apply(experiment_from_dict(doc), actor="ada", start=True)
        runtime.decisions.promote(KEY, "candidate", actor="bob")
    finally:
        runtime.close()
    assert aliases(mlflow_url, name) == {"champion": "1", "production": "2"}
    assert tags(mlflow_url, name, "2")["abkit.look"] == "manual"
    store = SqlStore.from_url(sqlite_url)
    try:
        (entry,) = trail(store)
        assert entry.snapshot["before"] == {"production": None, "production-before": None}
        with store.transaction() as tx:
            assert tx.outbox.pending() == []
    finally:
        store.close()


def test_the_cli_shows_a_pending_alias_change_and_wait_waits_for_it(
    sqlite_url: str, mlflow_server: MlflowServer, mlflow_url: str
) -> None:
    """MLflow away during `abkit experiment promote`: the command says the alias change is
    pending, `history` lists it with its attempts, `abkit wait` does not call the experiment
    promoted (exit 13 at its timeout) until the change is done; then it exits 0."""
    import os
    import subprocess
    import sys
    import time

    from abkit.infra.clock import SystemClock

    name = register_versions(mlflow_url, 2)
    MlflowRegistry(mlflow_url).set_alias(name, "champion", "1")
    env = {
        **os.environ,
        "ABKIT_DATABASE_URL": sqlite_url,
        "ABKIT_SPOOL_DIR": "off",
        "ABKIT_MLFLOW_TRACKING_URI": mlflow_url,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "abkit", *args], capture_output=True, text=True, env=env,
            timeout=120,
        )  # fmt: skip

    store = SqlStore.from_url(sqlite_url)
    try:
        start(store, Clock(T0), mlflow_url, name)
        mlflow_server.stop()
        try:
            promoted = cli("experiment", "promote", KEY, "candidate")
            assert promoted.returncode == 0, promoted.stderr
            assert "MLflow alias change pending (attempt 1" in promoted.stdout
            history = cli("experiment", "history", KEY)
            assert "pending   registry  MLflow alias change pending" in history.stdout
            waited = cli("wait", KEY, "--timeout", "2s", "--poll-interval", "0.2")
            assert waited.returncode == 13, waited.stdout + waited.stderr
            assert "model registry still has 1 change(s) pending" in waited.stdout + waited.stderr
        finally:
            mlflow_server.start()
        sync = RegistrySync(store, SystemClock(), MlflowRegistry(mlflow_url))
        done = 0
        for _ in range(100):  # what the worker does on its ticks, once the back-off has passed
            done += len(sync.dispatch().done)
            if done:
                break
            time.sleep(0.1)
        assert done == 1
        assert aliases(mlflow_url, name) == {"champion": "2", "previous-champion": "1"}
        waited = cli("wait", KEY, "--timeout", "10s", "--poll-interval", "0.2")
        assert waited.returncode == 0, waited.stdout + waited.stderr
        history = cli("experiment", "history", KEY)
        assert "registry" in history.stdout and "pending" not in history.stdout
    finally:
        store.close()
