"""The organization's monthly token pool: what is left of it, and refusing what does not fit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.db import utcnow
from tokendesk.errors import Conflict, NotFound
from tokendesk.token_requests import repository as repo


@dataclass(frozen=True)
class PoolUsage:
    """The pool and what the organization's current periods already use of it."""

    pool: int
    allocated: int
    granted: int
    left: int


async def pool_usage(
    session: AsyncSession, *, organization_id: int, now: datetime | None = None
) -> PoolUsage | None:
    """What is left of the organization's monthly pool; None when it has no pool.

    ``left`` may be negative when allocations alone already exceed the pool.
    """
    org = await repo.get_organization(session, organization_id=organization_id)
    if org is None:
        raise NotFound(f"organization {organization_id} not found")
    if org.pool is None:
        return None
    pool = org.pool
    allocated, granted = await repo.pool_totals(
        session,
        organization_id=organization_id,
        now=now or utcnow(),
        org_default=org.default_allocation,
    )
    return PoolUsage(
        pool=pool, allocated=allocated, granted=granted, left=pool - allocated - granted
    )


async def check_pool(
    session: AsyncSession, *, organization_id: int, needed: int, now: datetime
) -> None:
    """Refuse a grant the pool cannot cover (409 with what is left).

    Takes the organization's row lock first and holds it until commit, so
    concurrent approvals in one organization are checked one after another.
    """
    await repo.get_organization(session, organization_id=organization_id, lock=True)
    usage = await pool_usage(session, organization_id=organization_id, now=now)
    if usage is not None and needed > usage.left:
        raise Conflict(
            f"the organization's token pool has {max(usage.left, 0)} tokens left this period; "
            f"granting {needed} would exceed it"
        )
