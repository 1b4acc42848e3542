"""usage_team_endpoint_daily and usage_endpoint_daily: usage per day, (team,) model and
gateway endpoint; the daily rollups sum cached and reasoning tokens too

The new rollups are built from the raw events already recorded (usage reported
through the usage API has the endpoint ''), and the daily rollups' new sums from
the events that have cached or reasoning tokens: none before revision 0010.

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = ("cached_tokens", "reasoning_tokens")
SUMS = ("prompt_tokens", "completion_tokens", *KINDS, "total_tokens")
# Each daily rollup and the columns that key it, besides the organization and the day.
DAILY = {"usage_team_daily": ("team_id", "model"), "usage_model_daily": ("model",)}
BY_ENDPOINT = {
    "usage_team_endpoint_daily": ("team_id", "model", "endpoint"),
    "usage_endpoint_daily": ("model", "endpoint"),
}
# The rollups' keys as columns of the events.
AS_EVENTS = {
    "team_id": "COALESCE(team_id, 0)",
    "model": "model",
    "endpoint": "COALESCE(endpoint, '')",
}


def upgrade() -> None:
    for name in DAILY:
        with op.batch_alter_table(name, schema=None) as batch_op:
            for kind in KINDS:
                batch_op.add_column(
                    sa.Column(kind, sa.BigInteger(), nullable=False, server_default="0")
                )
    for name, keys in BY_ENDPOINT.items():
        _create(name, keys)
        group = ", ".join(["organization_id", "day", *(AS_EVENTS[key] for key in keys)])
        sums = ", ".join(f"SUM({column})" for column in SUMS)
        op.execute(
            f"INSERT INTO {name} (organization_id, day, {', '.join(keys)}, {', '.join(SUMS)},"
            f" calls) SELECT {group}, {sums}, COUNT(*) FROM usage_events GROUP BY {group}"
        )
    # The new sums, from the endpoint rollup just built whose key begins with theirs,
    # for the few rows whose events had cached or reasoning tokens.
    for (name, keys), source in zip(DAILY.items(), BY_ENDPOINT, strict=True):
        match = " AND ".join(f"e.{key} = {name}.{key}" for key in ("organization_id", "day", *keys))
        sums = ", ".join(
            f"{kind} = (SELECT SUM(e.{kind}) FROM {source} e WHERE {match})" for kind in KINDS
        )
        op.execute(
            f"UPDATE {name} SET {sums} WHERE EXISTS (SELECT 1 FROM {source} e"
            f" WHERE {match} AND (e.cached_tokens > 0 OR e.reasoning_tokens > 0))"
        )


def _create(name: str, keys: tuple[str, ...]) -> None:
    types: dict[str, sa.types.TypeEngine[Any]] = {
        "team_id": sa.BigInteger(),
        "model": sa.String(length=200),
        "endpoint": sa.String(length=20),
    }
    op.create_table(
        name,
        sa.Column(
            "organization_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("day", sa.Date(), nullable=False),
        *(sa.Column(key, types[key], nullable=False) for key in keys),
        *(
            sa.Column(
                column,
                sa.BigInteger(),
                nullable=False,
                server_default="0" if column in KINDS else None,
            )
            for column in SUMS
        ),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f(f"fk_{name}_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", "day", *keys, name=op.f(f"pk_{name}")),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    for name in reversed(BY_ENDPOINT):
        op.drop_table(name)
    for name in DAILY:
        with op.batch_alter_table(name, schema=None) as batch_op:
            for kind in reversed(KINDS):
                batch_op.drop_column(kind)
