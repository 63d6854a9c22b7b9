"""Ingestion order and maintained statistics: looks that read only what arrived since the last one.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

Every exposure and event gets ``seq``, its place in the order of ingestion (docs/design.md,
"Incremental looks"): PostgreSQL draws it from a sequence (``abkit_exposure_seq``,
``abkit_event_seq``) as the column default; SQLite, which has no sequences, from the counters in
``abkit_sequences`` through a trigger, so rows inserted by hand are numbered too and a number
is never reused after a delete. Existing rows are numbered in their stored order.

``analysis_watermarks`` and ``analysis_days`` hold each experiment's maintained sufficient
statistics per metric definition: totals up to one watermark of those numbers, per-day rows up
to another (docs/design.md, "Incremental looks").

Indexes: ``(experiment_key, seq)`` finds the units exposed since a watermark, ``events (seq)``
the events that arrived since; on PostgreSQL the unit-order indexes of 0005 also carry ``seq``
so a look reads both the old and the new value of a unit from the index alone.

Numbering existing rows rewrites both tables, and the index builds lock them against writes
(the gRPC servers journal in the meantime): on a large PostgreSQL database, run it in a quiet
hour, or build the indexes ``CONCURRENTLY`` first under the names below.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
COUNTERS = {"exposures": "abkit_exposure_seq", "events": "abkit_event_seq"}


def _numbers() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("s", sa.Float(), nullable=False),
        sa.Column("ss", sa.Float(), nullable=False),
        sa.Column("xs", sa.Float(), nullable=False),
        sa.Column("xss", sa.Float(), nullable=False),
        sa.Column("xys", sa.Float(), nullable=False),
        sa.Column("ds", sa.Float(), nullable=False),
        sa.Column("dss", sa.Float(), nullable=False),
        sa.Column("nds", sa.Float(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
    ]


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "abkit_sequences",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", BIGID, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_abkit_sequences")),
    )
    for table, sequence in COUNTERS.items():
        op.add_column(table, sa.Column("seq", sa.BigInteger(), nullable=True))
        if postgresql:
            op.execute(f"CREATE SEQUENCE {sequence} OWNED BY {table}.seq")
            op.execute(f"UPDATE {table} SET seq = nextval('{sequence}')")
            op.execute(f"ALTER TABLE {table} ALTER COLUMN seq SET DEFAULT nextval('{sequence}')")
        else:
            op.execute(f"UPDATE {table} SET seq = rowid")
            op.execute(
                "INSERT INTO abkit_sequences (name, value) "
                f"SELECT '{table}', COALESCE(MAX(seq), 0) FROM {table}"
            )
            # Numbered inside the inserting transaction, which holds SQLite's one write lock:
            # numbers follow commit order and are never reused (rowid would be after a delete).
            op.execute(
                f"CREATE TRIGGER {sequence} AFTER INSERT ON {table} WHEN NEW.seq IS NULL BEGIN "
                f"UPDATE abkit_sequences SET value = value + 1 WHERE name = '{table}'; "
                f"UPDATE {table} SET seq = (SELECT value FROM abkit_sequences "
                f"WHERE name = '{table}') WHERE rowid = NEW.rowid; END"
            )
    op.create_index("ix_exposures_experiment_seq", "exposures", ["experiment_key", "seq"])
    if postgresql:
        op.execute("CREATE INDEX ix_events_seq ON events (seq) INCLUDE (unit_id, metric)")
        op.execute("DROP INDEX ix_events_unit_metric_time")
        op.execute(
            "CREATE INDEX ix_events_unit_metric_time "
            "ON events (unit_id, metric, occurred_at) INCLUDE (value, seq)"
        )
        op.execute(
            "CREATE UNIQUE INDEX ix_exposures_unit_order "
            "ON exposures (experiment_key, unit_id) INCLUDE (arm_key, exposed_at, seq)"
        )
        op.execute(
            "ALTER TABLE exposures DROP CONSTRAINT pk_exposures, "
            "ADD CONSTRAINT pk_exposures PRIMARY KEY USING INDEX ix_exposures_unit_order"
        )
    else:
        op.create_index("ix_events_seq", "events", ["seq"])

    op.create_table(
        "analysis_watermarks",
        sa.Column("experiment_key", sa.String(64), nullable=False),
        sa.Column("metric_key", sa.String(32), nullable=False),
        sa.Column("metric", sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")),
        sa.Column("exposure_seq", sa.BigInteger(), nullable=False),
        sa.Column("event_seq", sa.BigInteger(), nullable=False),
        sa.Column("dated_exposure_seq", sa.BigInteger(), nullable=False),
        sa.Column("dated_event_seq", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "experiment_key", "metric_key", name=op.f("pk_analysis_watermarks")
        ),
    )
    op.create_table(
        "analysis_days",
        sa.Column("experiment_key", sa.String(64), nullable=False),
        sa.Column("metric_key", sa.String(32), nullable=False),
        sa.Column("arm_key", sa.String(64), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        *_numbers(),
        sa.PrimaryKeyConstraint(
            "experiment_key", "metric_key", "arm_key", "day", name=op.f("pk_analysis_days")
        ),
    )


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.drop_table("analysis_days")
    op.drop_table("analysis_watermarks")
    op.drop_index("ix_exposures_experiment_seq", table_name="exposures")
    if postgresql:
        op.execute(
            "CREATE UNIQUE INDEX ix_exposures_unit_order "
            "ON exposures (experiment_key, unit_id) INCLUDE (arm_key, exposed_at)"
        )
        op.execute(
            "ALTER TABLE exposures DROP CONSTRAINT pk_exposures, "
            "ADD CONSTRAINT pk_exposures PRIMARY KEY USING INDEX ix_exposures_unit_order"
        )
        op.execute("DROP INDEX ix_events_unit_metric_time")
        op.execute(
            "CREATE INDEX ix_events_unit_metric_time "
            "ON events (unit_id, metric, occurred_at) INCLUDE (value)"
        )
    op.drop_index("ix_events_seq", table_name="events")
    for table, sequence in COUNTERS.items():
        if not postgresql:
            op.execute(f"DROP TRIGGER {sequence}")
        # SQLite >= 3.35 drops an unindexed column in place (views on the table stay valid); on
        # PostgreSQL this also drops the sequence the column owns.
        op.execute(f"ALTER TABLE {table} DROP COLUMN seq")
    op.drop_table("abkit_sequences")
