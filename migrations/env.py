"""Alembic environment.

``abkit db upgrade`` passes an open connection in ``config.attributes["connection"]``; running
``alembic upgrade head`` from a checkout uses ``sqlalchemy.url`` from alembic.ini, or the
``ABKIT_DATABASE_URL`` setting when that is empty.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from abkit.store.schema import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from abkit.config import Settings
    from abkit.store.engine import create_store_engine

    url = config.get_main_option("sqlalchemy.url") or Settings.from_env().database_url
    engine = create_store_engine(url)
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("abkit migrations run online only: `abkit db upgrade`")
run_migrations_online()
