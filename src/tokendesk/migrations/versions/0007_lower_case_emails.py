"""users.email and external_identities.email lower-cased, so the unique constraint on
users.email holds whatever case an address arrives in

tokendesk compares emails case-insensitively and stores them lower-cased
(``tokendesk.accounts.emails``). Rows written before that rule may be mixed-case;
two of them that differ only in case would be one person twice, and choosing
which of them keeps the budget, the keys and the history is for an operator, so
the upgrade stops and names them instead of merging.

Revision ID: 0007
Revises: 0006
"""

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from tokendesk.migrations.runner import MigrationRefused

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_users = sa.table("users", sa.column("id", sa.Integer), sa.column("email", sa.String))
_identities = sa.table(
    "external_identities", sa.column("id", sa.Integer), sa.column("email", sa.String)
)


def _lower_case(table: sa.TableClause, rows: Sequence[sa.Row[Any, Any]]) -> None:
    # Python's lower(), the one the application uses: SQLite's lower() leaves
    # non-ASCII letters as they are.
    changed = [
        {"row_id": id_, "lowered": email.lower()} for id_, email in rows if email != email.lower()
    ]
    if changed:
        op.get_bind().execute(
            table.update()
            .where(table.c.id == sa.bindparam("row_id"))
            .values(email=sa.bindparam("lowered")),
            changed,
        )


def upgrade() -> None:
    bind = op.get_bind()
    users = bind.execute(sa.select(_users.c.id, _users.c.email).order_by(_users.c.id)).all()
    by_address: defaultdict[str, list[str]] = defaultdict(list)
    for _, email in users:
        by_address[email.lower()].append(email)
    clashes = [emails for emails in by_address.values() if len(emails) > 1]
    if clashes:
        listed = "; ".join(" and ".join(emails) for emails in clashes)
        raise MigrationRefused(
            "emails are now compared case-insensitively, and these users differ only in the "
            f"case of their email: {listed}. Change or remove all but one of each (for example "
            "`UPDATE users SET email = ...`), then run `tokendesk db upgrade` again."
        )
    _lower_case(_users, users)
    identities = bind.execute(
        sa.select(_identities.c.id, _identities.c.email).where(_identities.c.email.is_not(None))
    ).all()
    _lower_case(_identities, identities)


def downgrade() -> None:
    # Lower-cased addresses are valid under the old rules too; nothing to undo.
    pass
