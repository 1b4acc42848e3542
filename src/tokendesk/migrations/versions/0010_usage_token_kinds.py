"""usage_events.cached_tokens and reasoning_tokens: the parts of the input served from
the upstream's prompt cache and of the output spent reasoning

Events recorded before this revision did not say, so they count 0 of each.

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("cached_tokens", "reasoning_tokens")


def upgrade() -> None:
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        for name in COLUMNS:
            batch_op.add_column(
                sa.Column(name, sa.BigInteger(), nullable=False, server_default="0")
            )


def downgrade() -> None:
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        for name in reversed(COLUMNS):
            batch_op.drop_column(name)
