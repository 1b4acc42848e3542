"""A member's current balance: opening it, reading it (an ended period rolls over first)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.models import Organization, Team, User
from tokendesk.db import utcnow
from tokendesk.errors import NotFound
from tokendesk.events.bus import Event
from tokendesk.ledger.allocations import resolve_allocation
from tokendesk.ledger.models import (
    REMAINING,
    Balance,
    EntryKind,
    LedgerEntry,
)
from tokendesk.ledger.periods import period_bounds
from tokendesk.ledger.rollover import rollover_due


class BalanceView(Protocol):
    """What events need of a balance: an ORM row, or a plain row read by a bulk query."""

    @property
    def user_id(self) -> int: ...
    @property
    def organization_id(self) -> int: ...
    @property
    def period_start(self) -> datetime: ...
    @property
    def period_end(self) -> datetime: ...
    @property
    def allocation(self) -> int: ...
    @property
    def granted(self) -> int: ...
    @property
    def adjusted(self) -> int: ...
    @property
    def used(self) -> int: ...
    @property
    def reserved(self) -> int: ...
    @property
    def remaining(self) -> int: ...


def is_low(remaining: int, total: int, *, low_percent: int) -> bool:
    """Whether a balance is under its organization's low-balance threshold (less than
    ``low_percent`` of ``total`` left), or has nothing left at all."""
    return remaining <= 0 or total <= 0 or remaining * 100 < total * low_percent


def balance_event(balance: BalanceView, *, cause: str) -> Event:
    return Event(
        type="balance.changed",
        organization_id=balance.organization_id,
        user_id=balance.user_id,
        data={"user_id": balance.user_id, "cause": cause, **balance_snapshot(balance)},
    )


def balance_snapshot(balance: BalanceView) -> dict[str, Any]:
    return _snapshot(balance, balance.period_start.isoformat(), balance.period_end.isoformat())


def _snapshot(balance: BalanceView, start: str, end: str) -> dict[str, Any]:
    return {
        "allocation": balance.allocation,
        "granted": balance.granted,
        "adjusted": balance.adjusted,
        "used": balance.used,
        "reserved": balance.reserved,
        "remaining": balance.remaining,
        "period_start": start,
        "next_reset_at": end,
    }


# What a set-based write returns of each balance it changed: a :class:`BalanceView`
# for :func:`balance_snapshots`, remaining computed in SQL by its one definition.
SNAPSHOT_COLUMNS = (
    Balance.user_id,
    Balance.organization_id,
    Balance.period_start,
    Balance.period_end,
    Balance.allocation,
    Balance.granted,
    Balance.adjusted,
    Balance.used,
    Balance.reserved,
    REMAINING.label("remaining"),
)


class _Iso:
    """ISO strings of the few distinct period bounds among thousands of balances.

    Compared with the last one seen rather than hashed: hashing an aware datetime
    asks its time zone for the offset every time, comparing two with the same
    zone does not.
    """

    def __init__(self) -> None:
        self._moment: datetime | None = None
        self._text = ""

    def __call__(self, moment: datetime) -> str:
        if moment != self._moment:
            self._moment, self._text = moment, moment.isoformat()
        return self._text


def balance_snapshots(balances: Iterable[BalanceView], *, cause: str) -> dict[int, dict[str, Any]]:
    """:func:`balance_event`'s data for each of many balances (rows of
    :data:`SNAPSHOT_COLUMNS`), by user id, without building an ORM object for each."""
    start_iso, end_iso = _Iso(), _Iso()
    return {
        balance.user_id: {
            "user_id": balance.user_id,
            "cause": cause,
            **_snapshot(balance, start_iso(balance.period_start), end_iso(balance.period_end)),
        }
        for balance in balances
    }


async def open_balance(
    session: AsyncSession,
    *,
    user: User,
    org: Organization,
    team: Team | None,
    actor_id: int | None,
    now: datetime | None = None,
) -> Balance:
    """Start a new user's current period with the full allocation."""
    now = now or utcnow()
    start, end = period_bounds(now, reset_day=org.reset_day, timezone=org.timezone)
    allocation = resolve_allocation(user, team, org)
    balance = Balance(
        user_id=user.id,
        organization_id=org.id,
        period_start=start,
        period_end=end,
        allocation=allocation,
        granted=0,
        adjusted=0,
        used=0,
        reserved=0,
        updated_at=now,
    )
    session.add(balance)
    session.add(
        LedgerEntry(
            organization_id=org.id,
            user_id=user.id,
            period_start=start,
            kind=EntryKind.ALLOCATION.value,
            amount=allocation,
            actor_id=actor_id,
            reason="period opened",
            created_at=now,
        )
    )
    await session.flush()
    return balance


async def get_balance(
    session: AsyncSession, *, user_id: int, now: datetime | None = None
) -> Balance:
    """The user's balance for the current period, rolling it over first if it ended."""
    now = now or utcnow()
    balance = await session.get(Balance, user_id)
    if balance is None:
        raise NotFound(f"user {user_id} has no balance")
    if balance.period_end <= now:
        await rollover_due(session, now=now, user_ids=[user_id])
        await session.refresh(balance)
    return balance


async def get_balances(
    session: AsyncSession, *, user_ids: Iterable[int], now: datetime | None = None
) -> dict[int, Balance]:
    ids = list(set(user_ids))
    if not ids:
        return {}
    now = now or utcnow()
    await rollover_due(session, now=now, user_ids=ids)
    rows = await session.scalars(select(Balance).where(Balance.user_id.in_(ids)))
    return {row.user_id: row for row in rows}
