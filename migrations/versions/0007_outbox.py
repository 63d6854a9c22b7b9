"""An outbox: the changes to external systems a decision makes, recorded with the decision.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

When an experiment concludes, the MLflow Model Registry's aliases follow the decision
(docs/experiments.md, "MLflow Model Registry"). The change is written here in the decision's own
transaction, so it can never be lost while the decision stands; a dispatcher carries it out --
retrying with back-off while MLflow is unreachable -- and deletes the row when it is done (the
audit trail then records what moved). Rows with the same ``key`` (the registered model) are
carried out one at a time, by ``id``; ``observed`` keeps what the dispatcher saw before its
first write, and ``claimed_by``/``claimed_until`` let one dispatcher at a time work on a row.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("experiment_key", sa.String(length=64), nullable=False),
        sa.Column("decision_id", BIGID, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=256), nullable=False),
        sa.Column("intent", JSON, nullable=False),
        sa.Column("observed", JSON, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(length=200), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_key"],
            ["experiments.key"],
            name=op.f("fk_outbox_experiment_key_experiments"),
        ),
        sa.ForeignKeyConstraint(
            ["decision_id"], ["decisions.id"], name=op.f("fk_outbox_decision_id_decisions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    op.create_index("ix_outbox_experiment_key", "outbox", ["experiment_key"])


def downgrade() -> None:
    op.drop_index("ix_outbox_experiment_key", table_name="outbox")
    op.drop_table("outbox")
