"""The SQL of usage events: set-based statements whose count does not grow with the batch.

The statements of a batch are built once per dialect (the balance side of a batch
is :mod:`tokendesk.ledger.usage`) and run as Core on the
session's connection: a batch runs a dozen of them, and building each statement
anew (or going through the ORM) would cost more than the database's own work.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, cast

from sqlalchemy import (
    Table,
    bindparam,
    case,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.models import Organization, User
from tokendesk.db import Base, dialect_of, in_list, listed, run_core
from tokendesk.metering.models import UsageEvent


@dataclass(frozen=True)
class StoredEvent:
    id: int
    event_id: str
    user_id: int
    total_tokens: int
    balance_after: int


def table(model: type[Base]) -> Table:
    # Core statements on the table skip the ORM's per-row bulk bookkeeping.
    return cast(Table, model.__table__)


def dialect_insert(dialect: str) -> Any:
    # Both dialects spell ON CONFLICT the same way but need their own construct.
    if dialect == "postgresql":
        return postgresql.insert
    if dialect == "sqlite":
        return sqlite.insert
    raise NotImplementedError(f"usage ingest does not support the {dialect} dialect")


_events, _users = table(UsageEvent), table(User)


@cache
def _users_by_email(dialect: str) -> Any:
    # By email alone: with the organization in the WHERE clause too, both SQLite and
    # PostgreSQL read every user of the organization through its index and filter
    # them by email, instead of probing the unique email index once per email.
    return select(_users.c.email, _users.c.id, _users.c.organization_id).where(
        in_list(dialect, _users.c.email, "emails")
    )


@cache
def _stored_events(dialect: str) -> Any:
    e = _events
    return select(e.c.id, e.c.event_id, e.c.user_id, e.c.total_tokens, e.c.balance_after).where(
        e.c.organization_id == bindparam("org"), in_list(dialect, e.c.event_id, "event_ids")
    )


@cache
def _insert_events(dialect: str) -> Any:
    return (
        dialect_insert(dialect)(_events)
        .on_conflict_do_nothing(index_elements=["organization_id", "event_id"])
        .returning(_events.c.id, _events.c.event_id)
    )


async def organization_timezone(session: AsyncSession, organization_id: int) -> str:
    tz = await session.scalar(
        select(Organization.timezone).where(Organization.id == organization_id)
    )
    return tz or "UTC"


async def user_ids_by_email(
    session: AsyncSession, *, organization_id: int, emails: Collection[str]
) -> dict[str, int]:
    """Lower-cased email to user id, for users of ``organization_id`` only."""
    if not emails:
        return {}
    # Emails are stored lower-cased, so the unique index answers this.
    dialect = dialect_of(session)
    lowered = {email.lower() for email in emails}
    rows = await run_core(session, _users_by_email(dialect), {"emails": listed(dialect, lowered)})
    # Emails are unique across organizations: a user of another one is simply unknown here.
    return {email: user_id for email, user_id, org_id in rows if org_id == organization_id}


async def stored_events(
    session: AsyncSession, *, organization_id: int, event_ids: Collection[str]
) -> dict[str, StoredEvent]:
    if not event_ids:
        return {}
    dialect = dialect_of(session)
    rows = await run_core(
        session,
        _stored_events(dialect),
        {"org": organization_id, "event_ids": listed(dialect, event_ids)},
    )
    return {row[1]: StoredEvent(*row) for row in rows}


async def insert_events(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Insert the events no earlier call stored; returns event_id -> id of those inserted."""
    if not rows:
        return {}
    # A list of rows runs as "insertmanyvalues": one cached statement, rows sent in pages.
    result = await run_core(session, _insert_events(dialect_of(session)), list(rows))
    return {event_id: row_id for row_id, event_id in result}


async def fix_balance_after(session: AsyncSession, values: Mapping[int, int]) -> None:
    if not values:
        return
    await run_core(
        session,
        update(_events)
        .where(_events.c.id.in_(values))
        .values(balance_after=case(values, value=_events.c.id)),
    )
