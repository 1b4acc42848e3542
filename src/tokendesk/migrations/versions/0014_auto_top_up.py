"""Auto top-up: an organization's rule that grants a fixed bump when a member's usage
crosses a share of what they have, as an approval rule of kind ``top_up``

Every rule before this revision approves submitted requests: kind ``request``.

Revision ID: 0014
Revises: 0013
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("approval_rules", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=10), nullable=False, server_default="request")
        )
        batch_op.add_column(sa.Column("trigger_percent", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("top_up_amount", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("cooldown_minutes", sa.Integer(), nullable=True))
        # One top-up rule per organization: the debit path reads it with the balance row.
        batch_op.create_index(
            "uq_approval_rules_one_top_up",
            ["organization_id"],
            unique=True,
            sqlite_where=sa.text("kind = 'top_up'"),
            postgresql_where=sa.text("kind = 'top_up'"),
        )


def downgrade() -> None:
    with op.batch_alter_table("approval_rules", schema=None) as batch_op:
        batch_op.drop_index("uq_approval_rules_one_top_up")
        batch_op.drop_column("cooldown_minutes")
        batch_op.drop_column("top_up_amount")
        batch_op.drop_column("trigger_percent")
        batch_op.drop_column("kind")
