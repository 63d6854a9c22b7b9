"""Exposures and events indexed for reading in unit order, covering the analysis query.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

The analysis query joins an experiment's exposures to their units' events and aggregates per
unit. On PostgreSQL it streams: the exposures' primary key, carrying ``arm_key`` and
``exposed_at`` (``INCLUDE``), and an events index led by ``unit_id`` that carries ``metric``,
``occurred_at`` and ``value`` both deliver their rows in unit order from the index alone, so a
merge join feeds the per-unit aggregate with constant memory -- no hash table or sort of every
exposed unit, which spill to disk once they outgrow ``work_mem`` (BENCHMARKS.md, "Analysis at
1 M and 10 M units"). The events index it replaces, led by ``metric``, served no query: every
query of events joins on the unit. SQLite gets the unit-first events index (no ``INCLUDE``).

Building the indexes locks the tables against writes while it runs (the gRPC servers spool in
the meantime). On large PostgreSQL tables, build them first without the lock and this migration
only swaps them in::

    CREATE INDEX CONCURRENTLY ix_events_unit_metric_time
        ON events (unit_id, metric, occurred_at) INCLUDE (value);
    CREATE UNIQUE INDEX CONCURRENTLY ix_exposures_unit_order
        ON exposures (experiment_key, unit_id) INCLUDE (arm_key, exposed_at);
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE INDEX IF NOT EXISTS ix_events_unit_metric_time "
            "ON events (unit_id, metric, occurred_at) INCLUDE (value)"
        )
        op.execute(
            "CREATE UNIQUE INDEX IF NOT EXISTS ix_exposures_unit_order "
            "ON exposures (experiment_key, unit_id) INCLUDE (arm_key, exposed_at)"
        )
        # The covering index becomes the primary key (and takes its name).
        op.execute(
            "ALTER TABLE exposures DROP CONSTRAINT pk_exposures, "
            "ADD CONSTRAINT pk_exposures PRIMARY KEY USING INDEX ix_exposures_unit_order"
        )
    else:
        op.create_index(
            "ix_events_unit_metric_time", "events", ["unit_id", "metric", "occurred_at"]
        )
    op.drop_index("ix_events_metric_unit_time", table_name="events")


def downgrade() -> None:
    op.create_index(
        "ix_events_metric_unit_time", "events", ["metric", "unit_id", "occurred_at"], unique=False
    )
    op.drop_index("ix_events_unit_metric_time", table_name="events")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE exposures DROP CONSTRAINT pk_exposures, "
            "ADD CONSTRAINT pk_exposures PRIMARY KEY (experiment_key, unit_id)"
        )
