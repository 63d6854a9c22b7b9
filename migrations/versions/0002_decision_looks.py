"""Number the worker's looks in the audit trail, one row per experiment and look.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

The unique (experiment_key, look) constraint is what makes decisions exactly-once with several
workers: both may analyse the same look, only one can record it, and the action is applied in the
same transaction as the record. NULL looks (manual actions) never collide.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("look", sa.Integer(), nullable=True))
        batch.create_unique_constraint("uq_decisions_experiment_look", ["experiment_key", "look"])


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.drop_constraint("uq_decisions_experiment_look", type_="unique")
        batch.drop_column("look")
