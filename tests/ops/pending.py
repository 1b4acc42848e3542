"""Many pending token requests in Acme (the test world's organization) in a few
multi-row inserts, as the bulk-approval benchmark loads them, consistent with the
ledger so ``doctor`` stays clean."""

from __future__ import annotations

from benchmarks.pending import add_pending_members
from sqlalchemy import func, select

from tests.factories import World
from tokendesk.accounts.models import Organization, User
from tokendesk.db import Database, utcnow
from tokendesk.ledger.periods import period_bounds
from tokendesk.token_requests.models import TokenRequest

AMOUNT = 5_000


async def add_pending(database: Database, world: World, count: int) -> list[int]:
    """``count`` members of Acme, each with one pending request of AMOUNT; their ids."""
    now = utcnow()
    async with database.transaction(write=False) as session:
        org = await session.get(Organization, world.org_id)
        assert org is not None
        period = period_bounds(now, reset_day=org.reset_day, timezone=org.timezone)
        first = int(await session.scalar(select(func.max(User.id))) or 0) + 1
    await add_pending_members(
        database,
        organization_id=world.org_id,
        first_user_id=first,
        count=count,
        period=period,
        now=now,
        email="pending{}@example.com",
        amount=AMOUNT,
    )
    async with database.transaction(write=False) as session:
        query = select(TokenRequest.id).where(TokenRequest.status == "pending")
        ids = await session.scalars(query.order_by(TokenRequest.id))
        return list(ids)
