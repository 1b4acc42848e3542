"""What an organization's change of rules does to its current periods: allocations
re-applied (an ``allocation_change`` entry each) and period ends moved."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.lookups import get_organization
from tokendesk.db import utcnow
from tokendesk.events.bus import emit
from tokendesk.ledger.allocations import allocation_expression
from tokendesk.ledger.balances import balance_event
from tokendesk.ledger.locks import lock_in_user_order, users_of
from tokendesk.ledger.models import BALANCES, Balance, EntryKind, LedgerEntry
from tokendesk.ledger.rollover import rollover_due


async def reapply_allocations(
    session: AsyncSession,
    *,
    organization_id: int,
    user_ids: Sequence[int] | None,
    actor_id: int | None,
    reason: str,
) -> int:
    """Bring current-period allocations in line with the rules after a change.

    Each difference is an ``allocation_change`` ledger entry, so the change takes
    effect at once; later periods pick the new value up at their reset.
    """
    if user_ids is not None and not user_ids:
        return 0
    org = await get_organization(session, organization_id)
    # All the rows first, in user order: the reset below locks only the ended ones.
    await lock_in_user_order(session, users_of(organization_id) if user_ids is None else user_ids)
    await rollover_due(session, organization_id=organization_id, user_ids=user_ids)
    target = allocation_expression(org.default_allocation)
    query = select(
        Balance.user_id, Balance.period_start, Balance.allocation, target.label("target")
    ).where(Balance.organization_id == organization_id)
    if user_ids is not None:
        query = query.where(Balance.user_id.in_(user_ids))
    rows = [row for row in (await session.execute(query)).all() if row.allocation != row.target]
    if not rows:
        return 0
    now = utcnow()
    await session.execute(
        # Relative updates, one executemany: safe against a concurrent change of another column.
        update(BALANCES)
        .where(BALANCES.c.user_id == bindparam("uid"))
        .values(allocation=BALANCES.c.allocation + bindparam("diff"), updated_at=now),
        [{"uid": row.user_id, "diff": row.target - row.allocation} for row in rows],
    )
    await session.execute(
        insert(LedgerEntry),
        [
            {
                "organization_id": organization_id,
                "user_id": row.user_id,
                "period_start": row.period_start,
                "kind": EntryKind.ALLOCATION_CHANGE.value,
                "amount": row.target - row.allocation,
                "actor_id": actor_id,
                "reason": reason,
                "created_at": now,
            }
            for row in rows
        ],
    )
    session.expire_all()
    changed = await session.scalars(
        select(Balance).where(Balance.user_id.in_([row.user_id for row in rows]))
    )
    for balance in changed:
        emit(session, balance_event(balance, cause="allocation_change"))
    return len(rows)


async def move_period_end(
    session: AsyncSession, *, organization_id: int, end: datetime
) -> list[Balance]:
    """Move every current period of the organization to end at ``end``; the moved balances.

    The caller has locked them in user order (:func:`lock_in_user_order`): the
    UPDATE alone would take them in plan order.
    """
    result = await session.scalars(
        update(Balance)
        .where(Balance.organization_id == organization_id)
        .values(period_end=end)
        .returning(Balance)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    return list(result)
