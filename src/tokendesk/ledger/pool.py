"""The organization's monthly token pool: what its current periods use of it.

One computation for the settings page and for every check (approvals,
adjustments, raised allocations), so the two can never disagree. It reads the
cached balances, which ``doctor`` proves equal to the ledger; a balance whose
period ended counts with the allocation its rollover will give it and without
the grants and adjustments that end with the old period.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.models import Organization
from tokendesk.ledger.allocations import allocation_expression
from tokendesk.ledger.models import Balance


@dataclass(frozen=True)
class PoolUsage:
    """The pool and what the organization's current periods already use of it."""

    pool: int
    # Sum of this period's allocations of every user in the organization.
    allocated: int
    # Sum of this period's approved grants.
    granted: int
    # What adjustments added, per person: a negative adjustment takes tokens back
    # from one person and lends nothing to anyone else.
    adjusted: int
    # What every check may still hand out. May go negative: allocations alone can
    # exceed a pool set too low; that is shown, not hidden.
    left: int

    @property
    def left_before_adjustments(self) -> int:
        """What the settings page shows as left: the pool less allocations and grants.
        Adjustments are corrections there, though every check counts what they added."""
        return self.left + self.adjusted


async def pool_usages(
    session: AsyncSession, *, orgs: Collection[Organization], now: datetime
) -> dict[int, PoolUsage]:
    """The pool usage of each of ``orgs`` that has a pool, by organization id: one query."""
    pools = {org.id: org.pool for org in orgs if org.pool is not None}
    if not pools:
        return {}
    current = Balance.period_end > now
    query = (
        select(
            Balance.organization_id,
            func.sum(
                case(
                    (current, Balance.allocation),
                    else_=allocation_expression(Organization.default_allocation),
                )
            ),
            func.sum(case((current, Balance.granted), else_=0)),
            func.sum(case((and_(current, Balance.adjusted > 0), Balance.adjusted), else_=0)),
        )
        .join(Organization, Organization.id == Balance.organization_id)
        .where(Balance.organization_id.in_(sorted(pools)))
        .group_by(Balance.organization_id)
    )
    totals = {row[0]: row[1:] for row in (await session.execute(query)).all()}
    usages = {}
    for org_id, pool in pools.items():
        allocated, granted, adjusted = (int(total or 0) for total in totals.get(org_id, (0, 0, 0)))
        usages[org_id] = PoolUsage(
            pool=pool,
            allocated=allocated,
            granted=granted,
            adjusted=adjusted,
            left=pool - allocated - granted - adjusted,
        )
    return usages


async def pool_usage(
    session: AsyncSession, *, org: Organization, now: datetime
) -> PoolUsage | None:
    """What is left of ``org``'s monthly pool; None when it has no pool."""
    return (await pool_usages(session, orgs=[org], now=now)).get(org.id)
