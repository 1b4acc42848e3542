"""The organization's monthly token pool, and the bounds on every increase handed out.

The pool is the organization's budget for a period: this period's allocations,
the grants of approved requests and what adjustments added all come out of it.
Approvals, adjustments and allocation overrides are checked against it in the
same way, under the organization's row lock, so concurrent increases are
checked one after another.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.lookups import get_organization
from tokendesk.accounts.models import Organization
from tokendesk.db import utcnow
from tokendesk.errors import Conflict, InvalidInput
from tokendesk.ledger import pool as ledger_pool
from tokendesk.ledger.pool import PoolUsage


async def pool_usage(
    session: AsyncSession, *, organization_id: int, now: datetime | None = None
) -> PoolUsage | None:
    """What is left of the organization's monthly pool; None when it has no pool
    (see :mod:`tokendesk.ledger.pool`)."""
    org = await get_organization(session, organization_id)
    return await ledger_pool.pool_usage(session, org=org, now=now or utcnow())


async def lock_organization(session: AsyncSession, *, organization_id: int) -> Organization:
    """The organization, row-locked until commit (PostgreSQL): every pool check in
    the organization waits here for the one before it. Taken before any balance
    row, as approvals take it."""
    return await get_organization(session, organization_id, lock=True)


async def check_pool(
    session: AsyncSession,
    *,
    org: Organization,
    needed: int,
    now: datetime,
    field: str | None = None,
) -> None:
    """Refuse a grant the pool cannot cover (409 with what is left, naming ``field``).

    ``org`` is locked by the caller (:func:`lock_organization`) until commit, so
    concurrent approvals in one organization are checked one after another.
    """
    usage = await ledger_pool.pool_usage(session, org=org, now=now)
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
    locked: Organization | None = None,
) -> None:
    """Bound tokens handed to one person outside a request (an adjustment, a raised
    allocation) as an approval is bound: at most the organization's maximum per
    request (422 naming ``field``) and within what is left of its pool (409).

    Taking tokens back (``amount <= 0``) is never limited. Binds every role: the
    pool is the organization's budget, and an org admin who wants more raises it
    in the settings, where that change is audited. ``locked``: the organization, if
    the caller holds its lock already.
    """
    if amount <= 0:
        return
    org = locked or await lock_organization(session, organization_id=organization_id)
    if amount > org.max_request:
        raise InvalidInput(
            f"{field}: adds {amount} tokens, more than the organization's maximum "
            f"per request ({org.max_request})",
            field=field,
        )
    if org.pool is not None:
        await check_pool(
            session,
            org=org,
            needed=amount,
            now=now or utcnow(),
            field=field,
        )
