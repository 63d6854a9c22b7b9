"""Engines for the two supported stores: embedded SQLite and PostgreSQL (psycopg 3)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

from abkit.errors import ValidationError


def normalize_url(url: str | URL) -> URL:
    """Accept the URLs people paste (``postgresql://``, ``postgres://``) and pick psycopg 3."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ValidationError("ABKIT_DATABASE_URL", f"not a database URL: {exc}") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValidationError(
            "ABKIT_DATABASE_URL",
            f"unsupported database {parsed.get_backend_name()!r}; use sqlite:///path.db or "
            "postgresql+psycopg://user@host/db",
        )
    return parsed


def create_store_engine(url: str | URL, **kwargs: Any) -> Engine:
    """A SQLAlchemy engine tuned for abkit's access pattern on either backend."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        kwargs.setdefault("connect_args", {}).setdefault("timeout", 30)
        engine = create_engine(parsed, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    return create_engine(parsed, **kwargs)


def _sqlite_begin(conn: Any) -> None:
    # IMMEDIATE takes the write lock up front: two deferred transactions that both read and then
    # write would otherwise deadlock, and SQLite fails one at once instead of waiting.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own transaction handling breaks SAVEPOINT (SQLAlchemy docs, "Serializable
    # isolation / Savepoints / Transactional DDL"); turn it off and emit BEGIN ourselves.
    dbapi_connection.isolation_level = None
    # WAL lets the results page read while the writer appends; NORMAL is durable across
    # process crashes in WAL mode; foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
