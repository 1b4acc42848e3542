"""The organization's monthly token pool, and the bounds on every increase handed out.

The pool is the organization's budget for a period: this period's allocations,
the grants of approved requests and what adjustments added all come out of it.
Approvals, adjustments and allocation overrides are checked against it in the
same way, under the organization's row lock, so concurrent increases are
checked one after another.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.models import Organization
from tokendesk.db import utcnow
from tokendesk.errors import Conflict, InvalidInput, NotFound
from tokendesk.token_requests import repository as repo


@dataclass(frozen=True)
class PoolUsage:
    """The pool and what the organization's current periods already use of it."""

    pool: int
    allocated: int
    granted: int
    # What adjustments added, per person: a negative adjustment takes tokens back
    # from one person and lends nothing to anyone else.
    adjusted: int
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
    allocated, granted, adjusted = await repo.pool_totals(
        session,
        organization_id=organization_id,
        now=now or utcnow(),
        org_default=org.default_allocation,
    )
    return PoolUsage(
        pool=pool,
        allocated=allocated,
        granted=granted,
        adjusted=adjusted,
        left=pool - allocated - granted - adjusted,
    )


async def lock_organization(session: AsyncSession, *, organization_id: int) -> Organization:
    """The organization, row-locked until commit (PostgreSQL): every pool check in
    the organization waits here for the one before it. Taken before any balance
    row, as approvals take it."""
    org = await repo.get_organization(session, organization_id=organization_id, lock=True)
    if org is None:
        raise NotFound(f"organization {organization_id} not found")
    return org


async def check_pool(
    session: AsyncSession,
    *,
    organization_id: int,
    needed: int,
    now: datetime,
    field: str | None = None,
) -> None:
    """Refuse a grant the pool cannot cover (409 with what is left, naming ``field``).

    Takes the organization's row lock first and holds it until commit, so
    concurrent approvals in one organization are checked one after another.
    """
    await lock_organization(session, organization_id=organization_id)
    usage = await pool_usage(session, organization_id=organization_id, now=now)
    if usage is not None and needed > usage.left:
        prefix = f"{field}: " if field else ""
        raise Conflict(
            f"{prefix}the organization's token pool has {max(usage.left, 0)} tokens left "
            f"this period; granting {needed} would exceed it",
            field=field,
        )


async def check_increase(
    session: AsyncSession,
    *,
    organization_id: int,
    amount: int,
    field: str,
    now: datetime | None = None,
) -> None:
    """Bound tokens handed to one person outside a request (an adjustment, a raised
    allocation) as an approval is bound: at most the organization's maximum per
    request (422 naming ``field``) and within what is left of its pool (409).

    Taking tokens back (``amount <= 0``) is never limited. Binds every role: the
    pool is the organization's budget, and an org admin who wants more raises it
    in the settings, where that change is audited.
    """
    if amount <= 0:
        return
    org = await lock_organization(session, organization_id=organization_id)
    if amount > org.max_request:
        raise InvalidInput(
            f"{field}: adds {amount} tokens, more than the organization's maximum "
            f"per request ({org.max_request})",
            field=field,
        )
    if org.pool is not None:
        await check_pool(
            session,
            organization_id=organization_id,
            needed=amount,
            now=now or utcnow(),
            field=field,
        )
