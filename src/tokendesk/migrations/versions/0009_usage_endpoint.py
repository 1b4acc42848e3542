"""usage_events.endpoint: the gateway API each call was made on (chat, embeddings, ...)

Every call the gateway metered before this revision was a chat completion, so its
events say so; usage reported through the usage API names no endpoint and stays NULL.

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_events = sa.table("usage_events", sa.column("source", sa.String), sa.column("endpoint", sa.String))


def upgrade() -> None:
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("endpoint", sa.String(length=20), nullable=True))
    op.execute(_events.update().where(_events.c.source == "gateway").values(endpoint="chat"))


def downgrade() -> None:
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        batch_op.drop_column("endpoint")
