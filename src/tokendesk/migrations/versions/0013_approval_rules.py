"""approval_rules, and how each token request was decided (manual, bulk, rule)

Decisions made before this revision record no kind: nothing says whether they were
taken one at a time or in bulk, so they stay NULL rather than guessed.

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import tokendesk.db

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "approval_rules",
        sa.Column("id", _ID, nullable=False),
        sa.Column("organization_id", _ID, nullable=False),
        sa.Column("team_id", _ID, nullable=True),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("max_amount", sa.BigInteger(), nullable=True),
        sa.Column("max_count", sa.Integer(), nullable=True),
        sa.Column("max_tokens", sa.BigInteger(), nullable=True),
        sa.Column("pool_floor", sa.BigInteger(), nullable=True),
        sa.Column("created_at", tokendesk.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", tokendesk.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_approval_rules_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["team_id"],
            ["teams.id"],
            name=op.f("fk_approval_rules_team_id_teams"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_rules")),
    )
    with op.batch_alter_table("approval_rules", schema=None) as batch_op:
        batch_op.create_index(
            "ix_approval_rules_org_team_position",
            ["organization_id", "team_id", "position"],
            unique=False,
        )
    with op.batch_alter_table("token_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("decision_kind", sa.String(length=10), nullable=True))
        batch_op.add_column(sa.Column("decided_by_rule_id", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("decided_by_rule_name", sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("token_requests", schema=None) as batch_op:
        batch_op.drop_column("decided_by_rule_name")
        batch_op.drop_column("decided_by_rule_id")
        batch_op.drop_column("decision_kind")
    with op.batch_alter_table("approval_rules", schema=None) as batch_op:
        batch_op.drop_index("ix_approval_rules_org_team_position")
    op.drop_table("approval_rules")
