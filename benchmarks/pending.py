"""Bulk-load members with one pending token request each, consistent with the ledger.

Creating tens of thousands of users through the services would take minutes; this
writes the same rows (user, balance, the period's allocation ledger entry and a
pending request) with a few multi-row inserts per chunk, so ``doctor`` stays clean.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import insert

from tokendesk.accounts.models import User
from tokendesk.db import Database
from tokendesk.ledger.models import Balance, EntryKind, LedgerEntry
from tokendesk.token_requests.models import TokenRequest

CHUNK = 5_000
ALLOCATION = 100_000


async def add_pending_members(
    database: Database,
    *,
    organization_id: int,
    first_user_id: int,
    count: int,
    period: tuple[datetime, datetime],
    now: datetime,
    email: str = "member{}@bench.example",
    team_ids: Sequence[int] = (),
    amount: int | None = None,
    reason: str | None = None,
) -> None:
    """Members ``first_user_id`` ... with ids in order; requests oldest first.

    Without ``amount`` the requested amounts vary (1,000 to 5,999) so sorting means something.
    """
    start, end = period
    for offset in range(0, count, CHUNK):
        ids = range(first_user_id + offset, first_user_id + min(count, offset + CHUNK))

        def team(i: int) -> int | None:
            return team_ids[i % len(team_ids)] if team_ids else None

        async with database.transaction() as s:
            await s.execute(
                insert(User),
                [
                    {
                        "id": i,
                        "organization_id": organization_id,
                        "email": email.format(i),
                        "name": f"Member {i}",
                        "role": "member",
                        "team_id": team(i),
                        "is_active": True,
                        "created_at": now,
                    }
                    for i in ids
                ],
            )
            await s.execute(
                insert(Balance),
                [
                    {
                        "user_id": i,
                        "organization_id": organization_id,
                        "period_start": start,
                        "period_end": end,
                        "allocation": ALLOCATION,
                        "granted": 0,
                        "adjusted": 0,
                        "used": 0,
                        "reserved": 0,
                        "updated_at": now,
                    }
                    for i in ids
                ],
            )
            await s.execute(
                insert(LedgerEntry),
                [
                    {
                        "organization_id": organization_id,
                        "user_id": i,
                        "period_start": start,
                        "kind": EntryKind.ALLOCATION.value,
                        "amount": ALLOCATION,
                        "reason": "period opened",
                        "created_at": now,
                    }
                    for i in ids
                ],
            )
            await s.execute(
                insert(TokenRequest),
                [
                    {
                        "organization_id": organization_id,
                        "user_id": i,
                        "team_id": team(i),
                        "amount": amount if amount is not None else 1_000 + i % 5_000,
                        "reason": reason,
                        "status": "pending",
                        "balance_at_request": ALLOCATION,
                        "created_at": now - timedelta(seconds=count - (i - first_user_id)),
                    }
                    for i in ids
                ],
            )
