"""Settling the gateway's holds and recording their usage, in one transaction.

The orchestration sits here, in metering, beside :func:`service.settle_and_record`
(one hold through the REST API): usage accounting is metering's, while the ledger
writes the balances (:func:`ledger.settle_holds` closes the holds and gives back
what they held; :func:`service.record_usage` debits through the ledger's entries).
The gateway only batches settlements (its Settler) and calls :func:`settle_many`, so
the dependencies run gateway -> metering -> ledger and never back.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.ledger import service as ledger
from tokendesk.metering.service import UsageInput, record_usage


@dataclass(frozen=True)
class Settlement:
    reservation_id: int
    organization_id: int
    usage: UsageInput


async def settle_many(session: AsyncSession, settlements: list[Settlement]) -> None:
    """Close many holds and record their usage in a handful of statements."""
    # Core on the connection, which does not flush pending ORM changes by itself.
    await session.flush()
    await ledger.lock_in_user_order(session, {s.usage.user_id for s in settlements})
    await ledger.settle_holds(session, [(s.reservation_id, s.usage.debit) for s in settlements])
    # Usage is recorded even if the hold had already expired: the tokens were really used.
    by_org: dict[int, list[UsageInput]] = defaultdict(list)
    for settlement in settlements:
        by_org[settlement.organization_id].append(settlement.usage)
    for organization_id, events in by_org.items():
        await record_usage(session, organization_id=organization_id, events=events)
