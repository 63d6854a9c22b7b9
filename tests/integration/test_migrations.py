"""Migrations are reviewed code: they build exactly the models' schema, and undo cleanly."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from abkit.store import migrate
from abkit.store.engine import create_store_engine
from abkit.store.schema import Base


def _drop_everything(engine: sa.Engine) -> None:
    migrate.downgrade(engine, "base")
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))


def test_upgrade_downgrade_upgrade_matches_the_models(sql_url: str) -> None:
    engine = create_store_engine(sql_url)
    try:
        _drop_everything(engine)
        with engine.connect() as conn:
            assert sa.inspect(conn).get_table_names() == []
        migrate.upgrade(engine)
        migrate.downgrade(engine, "base")
        with engine.connect() as conn:
            assert set(sa.inspect(conn).get_table_names()) <= {"alembic_version"}
        migrate.upgrade(engine)
        assert migrate.is_up_to_date(engine)
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_one_linear_history() -> None:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    assert len(scripts.get_heads()) == 1
    assert migrate.head_revision() == scripts.get_current_head()
