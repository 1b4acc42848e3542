"""All SQL of metering: set-based statements whose count does not grow with the batch."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.models import User
from tokendesk.ledger.models import Balance, EntryKind, LedgerEntry
from tokendesk.metering.models import UsageDaily, UsageEvent


@dataclass(frozen=True)
class Member:
    id: int
    organization_id: int
    team_id: int | None


@dataclass(frozen=True)
class StoredEvent:
    id: int
    event_id: str
    user_id: int
    total_tokens: int
    balance_after: int


# Rows per multi-VALUES statement: 1,000 rows of a dozen columns stay far below the
# bound-parameter limits of SQLite (32,766) and asyncpg (32,767).
CHUNK_ROWS = 1000


def _chunks(rows: Sequence[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), CHUNK_ROWS):
        yield list(rows[start : start + CHUNK_ROWS])


def _dialect_insert(session: AsyncSession) -> Any:
    # Both dialects spell ON CONFLICT the same way but need their own construct.
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert
    if name == "sqlite":
        return sqlite.insert
    raise NotImplementedError(f"usage ingest does not support the {name} dialect")


async def members(session: AsyncSession, *, user_ids: Collection[int]) -> dict[int, Member]:
    if not user_ids:
        return {}
    rows = await session.execute(
        select(User.id, User.organization_id, User.team_id).where(User.id.in_(user_ids))
    )
    return {row.id: Member(row.id, row.organization_id, row.team_id) for row in rows}


async def user_ids_by_email(
    session: AsyncSession, *, organization_id: int, emails: Collection[str]
) -> dict[str, int]:
    """Lower-cased email to user id, for users of ``organization_id`` only."""
    if not emails:
        return {}
    rows = await session.execute(
        select(func.lower(User.email), User.id).where(
            User.organization_id == organization_id,
            func.lower(User.email).in_({email.lower() for email in emails}),
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


async def lock_balances(session: AsyncSession, *, user_ids: Collection[int]) -> dict[int, Balance]:
    """Load and (on PostgreSQL) lock the balances in user order, so batches never deadlock."""
    rows = await session.scalars(
        select(Balance)
        .where(Balance.user_id.in_(user_ids))
        .order_by(Balance.user_id)
        .with_for_update()
        # Earlier statements in this transaction may have moved these rows behind the ORM.
        .execution_options(populate_existing=True)
    )
    return {row.user_id: row for row in rows}


async def insert_events(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Insert the events no earlier call stored; returns event_id -> id of those inserted."""
    if not rows:
        return {}
    inserted: dict[str, int] = {}
    for chunk in _chunks(rows):
        stmt = (
            _dialect_insert(session)(UsageEvent)
            .values(chunk)
            .on_conflict_do_nothing(index_elements=["organization_id", "event_id"])
            .returning(UsageEvent.id, UsageEvent.event_id)
        )
        result = await session.execute(stmt)
        inserted.update((event_id, row_id) for row_id, event_id in result)
    return inserted


async def fix_balance_after(session: AsyncSession, values: Mapping[int, int]) -> None:
    if not values:
        return
    await session.execute(
        update(UsageEvent)
        .where(UsageEvent.id.in_(values))
        .values(balance_after=case(values, value=UsageEvent.id))
        .execution_options(synchronize_session=False)
    )


async def insert_usage_entries(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    kind = EntryKind.USAGE.value
    for chunk in _chunks(rows):
        await session.execute(insert(LedgerEntry).values([{**row, "kind": kind} for row in chunk]))


async def add_used(
    session: AsyncSession, *, used: Mapping[int, int], now: datetime
) -> list[Balance]:
    """One UPDATE for every user: ``used`` grows by each user's own sum."""
    if not used:
        return []
    result = await session.scalars(
        update(Balance)
        .where(Balance.user_id.in_(used))
        .values(used=Balance.used + case(used, value=Balance.user_id), updated_at=now)
        .returning(Balance)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    return list(result)


async def upsert_rollups(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Add each (org, day, user, model) group to its daily row, creating it when missing."""
    for chunk in _chunks(rows):
        stmt = _dialect_insert(session)(UsageDaily).values(chunk)
        stmt = stmt.on_conflict_do_update(
            index_elements=["organization_id", "day", "user_id", "model"],
            set_={
                "team_id": stmt.excluded.team_id,
                "prompt_tokens": UsageDaily.prompt_tokens + stmt.excluded.prompt_tokens,
                "completion_tokens": UsageDaily.completion_tokens + stmt.excluded.completion_tokens,
                "total_tokens": UsageDaily.total_tokens + stmt.excluded.total_tokens,
                "calls": UsageDaily.calls + stmt.excluded.calls,
            },
        )
        await session.execute(stmt)
