"""the daily digest of pending requests (off by default) and each team's approvers

Revision ID: 0015
Revises: 0014
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import tokendesk.db

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("notification_settings", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("digest_enabled", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(
            sa.Column("digest_hour", sa.Integer(), server_default=sa.text("8"), nullable=False)
        )
    op.create_table(
        "notification_digests",
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("organization_id", _ID, nullable=False),
        sa.Column("created_at", tokendesk.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_notification_digests_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_notification_digests_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "day", name=op.f("pk_notification_digests")),
    )
    op.create_table(
        "notification_team_approvers",
        sa.Column("team_id", _ID, nullable=False),
        sa.Column("user_id", _ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["team_id"],
            ["teams.id"],
            name=op.f("fk_notification_team_approvers_team_id_teams"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_notification_team_approvers_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("team_id", "user_id", name=op.f("pk_notification_team_approvers")),
    )


def downgrade() -> None:
    op.drop_table("notification_team_approvers")
    op.drop_table("notification_digests")
    with op.batch_alter_table("notification_settings", schema=None) as batch_op:
        batch_op.drop_column("digest_hour")
        batch_op.drop_column("digest_enabled")
