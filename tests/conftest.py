"""Shared fixtures: stores on every backend, a real PostgreSQL database per test session.

PostgreSQL comes from ``ABKIT_TEST_POSTGRES_URL`` (default: the local server,
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``). Each session creates its own
database and drops it at the end; tables are emptied between tests. When PostgreSQL cannot be
reached, its tests are *skipped with the reason shown* -- unless ``ABKIT_REQUIRE_POSTGRES=1``
(set by ``.ci/run``), in which case they fail: CI must never go green without PostgreSQL.
NATS is treated the same way (``ABKIT_TEST_NATS_URL``, default the local JetStream server;
``ABKIT_REQUIRE_NATS=1``): see tests/nats_support.py; and MLflow (one real ``mlflow server``
per session, ``ABKIT_REQUIRE_MLFLOW=1``): see tests/mlflow_support.py.

Property tests (Hypothesis) explore new inputs on every local run, which is how they find bugs;
CI loads the ``ci`` profile (``HYPOTHESIS_PROFILE=ci``, set by ``.ci/run``): a fixed seed and no
example database, so a CI run is reproducible and never red because of luck. An input found
locally is pinned as an ``@example`` on its test.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa
from hypothesis import settings

from abkit.store import migrate
from abkit.store.engine import create_store_engine
from abkit.store.memory import MemoryStore
from abkit.store.schema import Base
from abkit.store.sql import SqlStore

if TYPE_CHECKING:
    from abkit.infra.stream import StreamSettings
    from tests.mlflow_support import MlflowServer
    from tests.nats_support import NatsCluster

settings.register_profile("ci", derandomize=True, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

DEFAULT_PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BACKENDS = ("memory", "sqlite", "postgresql")
SQL_BACKENDS = ("sqlite", "postgresql")


def _require_postgres() -> bool:
    return os.environ.get("ABKIT_REQUIRE_POSTGRES", "") == "1"


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    return os.environ.get("ABKIT_TEST_POSTGRES_URL", DEFAULT_PG_ADMIN_URL)


@pytest.fixture(scope="session")
def pg_database(pg_admin_url: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session; its URL."""
    admin = create_store_engine(pg_admin_url, isolation_level="AUTOCOMMIT", pool_size=1)
    name = f"abkit_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        message = f"PostgreSQL unreachable at {pg_admin_url}: {str(exc).splitlines()[0]}"
        if _require_postgres():
            pytest.fail(f"{message} (ABKIT_REQUIRE_POSTGRES=1)")
        pytest.skip(message)
    url = str(
        sa.engine.make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    )
    engine = create_store_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating every time would be slow)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    engine = create_store_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    engine.dispose()  # closing the last connection checkpoints the WAL into the file
    assert not path.with_name(path.name + "-wal").exists()
    return path


def _empty_tables(url: str) -> None:
    engine = create_store_engine(url)
    with engine.begin() as conn:
        names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "abkit.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def pg_url(pg_database: str) -> str:
    _empty_tables(pg_database)
    return pg_database


@pytest.fixture(params=SQL_BACKENDS)
def sql_url(request: pytest.FixtureRequest) -> str:
    """A migrated, empty database URL on each SQL backend."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture(params=SQL_BACKENDS)
def fresh_sql_store(
    request: pytest.FixtureRequest, sqlite_template: Path, tmp_path: Path
) -> Callable[[], SqlStore]:
    """A factory of empty, migrated SQL stores on each backend (one per Hypothesis example)."""
    counter = iter(range(1_000_000))

    def make() -> SqlStore:
        if request.param == "sqlite":
            path = tmp_path / f"abkit-{next(counter)}.db"
            shutil.copy(sqlite_template, path)
            return SqlStore.from_url(f"sqlite:///{path}")
        url = str(request.getfixturevalue("pg_database"))
        _empty_tables(url)
        return SqlStore.from_url(url)

    return make


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest) -> Iterator[MemoryStore | SqlStore]:
    """An empty store on each backend: the in-memory twin, SQLite and PostgreSQL."""
    if request.param == "memory":
        yield MemoryStore()
        return
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    sql = SqlStore.from_url(str(request.getfixturevalue(fixture)))
    yield sql
    sql.close()


@pytest.fixture(scope="session")
def nats_url() -> str:
    """The shared NATS server (JetStream on); tests give it only streams of their own."""
    from tests.nats_support import SHARED_URL, unavailable, wait_jetstream

    try:
        wait_jetstream(SHARED_URL, timeout=10)
    except AssertionError as exc:
        unavailable(str(exc))
    return SHARED_URL


@pytest.fixture
def stream_settings(nats_url: str) -> Iterator[StreamSettings]:
    """A stream of this test's own on the shared server (name and subjects), deleted after."""
    from tests.nats_support import delete_stream, unique_stream

    settings = unique_stream([nats_url])
    yield settings
    delete_stream(settings)


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """One 3-node JetStream cluster (its own nats-server processes) for the test session."""
    from tests.nats_support import NatsCluster

    cluster = NatsCluster(tmp_path_factory.mktemp("nats-cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One real ``mlflow server`` (SQLite backend store, local artifacts) for the session."""
    from tests.mlflow_support import start_server

    server = start_server(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()
