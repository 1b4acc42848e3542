"""Balances as of now, read without writing: an ended period shows what its rollover will write.

Reads never roll over (the scheduler and the write paths do): a balance whose
period has ended is shown as :func:`~tokendesk.ledger.rollover.rolled_over`
computes it, in SQL over the stored row, so what a read shows is what the
rollover then writes, and the ``balances`` row stays as it is until then.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import ColumnElement, inspect, select
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.models import Organization
from tokendesk.db import utcnow, writes
from tokendesk.errors import NotFound
from tokendesk.ledger.balances import get_balances
from tokendesk.ledger.models import Balance
from tokendesk.ledger.rollover import carried_debit, rolled_over


async def current_balance(
    session: AsyncSession, *, user_id: int, now: datetime | None = None
) -> Balance:
    """The user's balance for the current period, without writing (see the module)."""
    balances = await current_balances(session, user_ids=[user_id], now=now)
    if user_id not in balances:
        raise NotFound(f"user {user_id} has no balance")
    return balances[user_id]


async def current_balances(
    session: AsyncSession, *, user_ids: Iterable[int], now: datetime | None = None
) -> dict[int, Balance]:
    """The users' balances for the current period, by user id.

    In a read transaction, a balance whose period has ended comes back as a
    ``Balance`` outside the session, holding what its rollover will write: it is
    never written itself. In a write transaction, which holds the writer's place
    already, it is rolled over (``get_balances``).
    """
    ids = sorted(set(user_ids))
    if not ids:
        return {}
    now = now or utcnow()
    if writes(session):
        return await get_balances(session, user_ids=ids, now=now)
    stored = {
        row.user_id: row
        for row in await session.scalars(select(Balance).where(Balance.user_id.in_(ids)))
    }
    return {**stored, **await rolled_over_balances(session, stored.values(), now=now)}


async def rolled_over_balances(
    session: AsyncSession, balances: Iterable[Balance], *, now: datetime
) -> dict[int, Balance]:
    """Of ``balances`` (stored rows), those whose period has ended, as their rollover
    at ``now`` will leave them: one query per organization, as the rollover runs."""
    ended: dict[int, dict[int, Balance]] = defaultdict(dict)
    for balance in balances:
        if balance.period_end <= now:
            ended[balance.organization_id][balance.user_id] = balance
    out: dict[int, Balance] = {}
    for org_id, rows in ended.items():
        org = await session.get(Organization, org_id)
        if org is None:
            continue
        new = rolled_over(org, now=now)
        computed = {name: value for name, value in new.items() if isinstance(value, ColumnElement)}
        given = {name: value for name, value in new.items() if name not in computed}
        query = select(Balance.user_id, *(value.label(name) for name, value in computed.items()))
        for row in await session.execute(query.where(Balance.user_id.in_(sorted(rows)))):
            figures = row._asdict()
            user_id = figures.pop("user_id")
            old = rows[user_id]
            out[user_id] = Balance(
                user_id=user_id,
                organization_id=org_id,
                reserved=old.reserved,
                updated_at=old.updated_at,
                **given,
                **figures,
            )
    return out


async def opening_debit(session: AsyncSession, *, balance: Balance) -> int:
    """The debit the balance's current period opened with (0 or negative), for a
    stored balance or one :func:`current_balances` shows as its rollover will leave it."""
    if inspect(balance).transient:
        # Not rolled over yet: the rollover's only adjustment is the carried debit.
        return balance.adjusted
    return await carried_debit(session, balance=balance)
