"""All SQL of metering: set-based statements whose count does not grow with the batch."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, case, insert, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.models import Organization, User
from tokendesk.db import Base
from tokendesk.ledger.models import Balance, EntryKind, LedgerEntry
from tokendesk.metering.models import UsageEvent


@dataclass(frozen=True)
class StoredEvent:
    id: int
    event_id: str
    user_id: int
    total_tokens: int
    balance_after: int


@dataclass
class MemberBalance:
    """A user's balance row with the user's current team."""

    user_id: int
    organization_id: int
    period_start: datetime
    period_end: datetime
    allocation: int
    granted: int
    adjusted: int
    used: int
    reserved: int
    team_id: int | None

    @property
    def remaining(self) -> int:
        return self.allocation + self.granted + self.adjusted - self.used - self.reserved


def _table(model: type[Base]) -> Table:
    # Core statements on the table skip the ORM's per-row bulk bookkeeping.
    return cast(Table, model.__table__)


def _dialect_insert(session: AsyncSession) -> Any:
    # Both dialects spell ON CONFLICT the same way but need their own construct.
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert
    if name == "sqlite":
        return sqlite.insert
    raise NotImplementedError(f"usage ingest does not support the {name} dialect")


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
    rows = await session.execute(
        select(User.email, User.id).where(
            User.organization_id == organization_id,
            User.email.in_({email.lower() for email in emails}),
        )
    )
    return {email: user_id for email, user_id in rows}


async def stored_events(
    session: AsyncSession, *, organization_id: int, event_ids: Collection[str]
) -> dict[str, StoredEvent]:
    if not event_ids:
        return {}
    rows = await session.execute(
        select(
            UsageEvent.id,
            UsageEvent.event_id,
            UsageEvent.user_id,
            UsageEvent.total_tokens,
            UsageEvent.balance_after,
        ).where(
            UsageEvent.organization_id == organization_id,
            UsageEvent.event_id.in_(event_ids),
        )
    )
    return {row.event_id: StoredEvent(*row) for row in rows}


async def lock_balances(
    session: AsyncSession, *, user_ids: Collection[int]
) -> dict[int, MemberBalance]:
    """Read and (on PostgreSQL) lock the balances, in user order so batches never deadlock.

    Plain rows, not ORM objects: a batch reads a hundred of them and changes them
    with one UPDATE, so identity-map bookkeeping would only cost time.
    """
    rows = await session.execute(
        select(
            Balance.user_id,
            Balance.organization_id,
            Balance.period_start,
            Balance.period_end,
            Balance.allocation,
            Balance.granted,
            Balance.adjusted,
            Balance.used,
            Balance.reserved,
            User.team_id,
        )
        .join(User, User.id == Balance.user_id)
        .where(Balance.user_id.in_(user_ids))
        .order_by(Balance.user_id)
        .with_for_update(of=Balance)
    )
    return {row.user_id: MemberBalance(**row._mapping) for row in rows}


async def insert_events(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Insert the events no earlier call stored; returns event_id -> id of those inserted."""
    if not rows:
        return {}
    table = _table(UsageEvent)
    stmt = (
        _dialect_insert(session)(table)
        .on_conflict_do_nothing(index_elements=["organization_id", "event_id"])
        .returning(table.c.id, table.c.event_id)
    )
    # A list of rows runs as "insertmanyvalues": one cached statement, rows sent in pages.
    result = await session.execute(stmt, list(rows))
    return {event_id: row_id for row_id, event_id in result}


async def fix_balance_after(session: AsyncSession, values: Mapping[int, int]) -> None:
    if not values:
        return
    await session.execute(
        update(UsageEvent)
        .where(UsageEvent.id.in_(values))
        .values(balance_after=case(values, value=UsageEvent.id))
        .execution_options(synchronize_session=False)
    )


async def insert_usage_entries(session: AsyncSession, *, usage_event_ids: Collection[int]) -> None:
    """A usage ledger entry for each of these events, in its user's current period."""
    if not usage_event_ids:
        return
    source = (
        select(
            UsageEvent.organization_id,
            UsageEvent.user_id,
            Balance.period_start,
            literal(EntryKind.USAGE.value),
            -UsageEvent.total_tokens,
            UsageEvent.id,
            UsageEvent.model + " via " + UsageEvent.source,
            UsageEvent.recorded_at,
        )
        .join(Balance, Balance.user_id == UsageEvent.user_id)
        .where(UsageEvent.id.in_(usage_event_ids))
    )
    columns = [
        "organization_id",
        "user_id",
        "period_start",
        "kind",
        "amount",
        "usage_event_id",
        "reason",
        "created_at",
    ]
    await session.execute(insert(_table(LedgerEntry)).from_select(columns, source))


async def add_used(session: AsyncSession, *, used: Mapping[int, int], now: datetime) -> None:
    """Grow each user's ``used`` by their sum: one UPDATE statement, run for every user.

    Relative, not absolute, so it composes with concurrent holds on the same row.
    """
    if not used:
        return
    table = _table(Balance)
    stmt = (
        update(table)
        .where(table.c.user_id == bindparam("uid"))
        .values(used=table.c.used + bindparam("delta"), updated_at=now)
    )
    await session.execute(stmt, [{"uid": uid, "delta": delta} for uid, delta in used.items()])
