"""Ended periods move into the current one, exactly once, with any debit carried over."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.models import Organization
from tokendesk.db import utcnow
from tokendesk.events.bus import Event, emit
from tokendesk.ledger.allocations import allocation_expression
from tokendesk.ledger.models import (
    Balance,
    EntryKind,
    LedgerEntry,
    remaining_of,
)
from tokendesk.ledger.periods import period_bounds, zone


def rolled_over(org: Organization, *, now: datetime) -> dict[str, Any]:
    """What rolling over at ``now`` sets on a balance of ``org`` whose period ended,
    column by column: a value, or SQL over the ended period's row.

    The rollover writes it and reads show it (:mod:`tokendesk.ledger.reads`), so
    what a read shows is what the rollover then writes. ``reserved`` is not in it:
    held tokens carry over.
    """
    start, end = period_bounds(now, reset_day=org.reset_day, timezone=org.timezone)
    # What the period ended with, held tokens aside (they carry over).
    ended_with = remaining_of(
        Balance.allocation, Balance.granted, Balance.adjusted, Balance.used, 0
    )
    carried = case((ended_with < 0, ended_with), else_=0) if org.carry_over_debt else 0
    return {
        "period_start": start,
        "period_end": end,
        "allocation": allocation_expression(org.default_allocation),
        "granted": 0,
        "adjusted": carried,
        "used": 0,
    }


async def rollover_due(
    session: AsyncSession,
    *,
    now: datetime | None = None,
    user_ids: Sequence[int] | None = None,
    organization_id: int | None = None,
) -> int:
    """Move every balance whose period has ended into the current period.

    The conditional ``UPDATE ... WHERE period_end <= now`` is what makes a reset
    happen exactly once: a second process racing this one updates no rows,
    so it writes no ledger entries either. Tokens granted or adjusted in the old
    period end with it; held reservations carry over to the new one. A balance
    that ended below zero (held tokens aside, as they carry over) opens the new
    period with that debit, a ``carried_debit`` entry, unless the organization
    turned carrying over off.
    """
    now = now or utcnow()
    # The rows to reset, locked in user order (PostgreSQL) before any is updated, as
    # every transaction that changes several balances takes them (see lock_in_user_order).
    due = (
        select(Balance.organization_id)
        .where(Balance.period_end <= now)
        .order_by(Balance.user_id)
        .with_for_update()
    )
    if user_ids is not None:
        if not user_ids:
            return 0
        due = due.where(Balance.user_id.in_(user_ids))
    if organization_id is not None:
        due = due.where(Balance.organization_id == organization_id)
    org_ids = sorted(set((await session.scalars(due)).all()))
    total = 0
    for org_id in org_ids:
        org = await session.get(Organization, org_id)
        if org is None:
            continue
        new = rolled_over(org, now=now)
        start, end = new["period_start"], new["period_end"]
        stmt = (
            update(Balance)
            .where(Balance.organization_id == org_id, Balance.period_end <= now)
            .values(**new, updated_at=now)
            .returning(Balance.user_id, Balance.allocation, Balance.adjusted)
            .execution_options(synchronize_session=False)
        )
        if user_ids is not None:
            stmt = stmt.where(Balance.user_id.in_(user_ids))
        rows = (await session.execute(stmt)).all()
        if not rows:
            continue
        debits = {user_id: debit for user_id, _, debit in rows if debit}
        label = carried_from(start, timezone=org.timezone)
        entries = [
            {
                "organization_id": org_id,
                "user_id": user_id,
                "period_start": start,
                "kind": EntryKind.ALLOCATION.value,
                "amount": allocation,
                "actor_id": None,
                "reason": "monthly reset",
                "created_at": now,
            }
            for user_id, allocation, _ in rows
        ]
        entries += [
            {
                "organization_id": org_id,
                "user_id": user_id,
                "period_start": start,
                "kind": EntryKind.CARRIED_DEBIT.value,
                "amount": debit,
                "actor_id": None,
                "reason": f"carried from {label}",
                "created_at": now,
            }
            for user_id, debit in debits.items()
        ]
        await session.execute(insert(LedgerEntry), entries)
        for user_id, allocation, debit in rows:
            emit(
                session,
                Event(
                    type="period.reset",
                    organization_id=org_id,
                    user_id=user_id,
                    data={
                        "user_id": user_id,
                        "allocation": allocation,
                        "carried": debit,
                        "carried_from": label,
                        "period_start": start.isoformat(),
                        "next_reset_at": end.isoformat(),
                    },
                ),
            )
        total += len(rows)
    # Objects already loaded in this session may now be stale.
    if total:
        session.expire_all()
    return total


def carried_from(period_start: datetime, *, timezone: str) -> str:
    """The month a debit carried into the period starting at ``period_start`` came
    from: the month the day before it falls in ("November")."""
    return (period_start.astimezone(zone(timezone)) - timedelta(days=1)).strftime("%B")


async def carried_debit(session: AsyncSession, *, balance: Balance) -> int:
    """The debit the balance's current period opened with (0 or negative)."""
    amount = await session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
            LedgerEntry.user_id == balance.user_id,
            LedgerEntry.period_start == balance.period_start,
            LedgerEntry.kind == EntryKind.CARRIED_DEBIT.value,
        )
    )
    return int(amount or 0)
