"""Grants, adjustments and allocation changes credited to one member's current period."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.bounds import BALANCE_CEILING
from tokendesk.db import utcnow
from tokendesk.errors import InvalidInput
from tokendesk.events.bus import emit
from tokendesk.ledger.balances import balance_event, get_balance
from tokendesk.ledger.models import (
    Balance,
    EntryKind,
    LedgerEntry,
)

# Which cached column each entry kind moves, and with which sign.
KIND_COLUMN: dict[str, str] = {
    EntryKind.ALLOCATION: "allocation",
    EntryKind.ALLOCATION_CHANGE: "allocation",
    EntryKind.GRANT: "granted",
    EntryKind.ADJUSTMENT: "adjusted",
    # A debit carried from the last period opens the new one as an adjustment would.
    EntryKind.CARRIED_DEBIT: "adjusted",
}


async def credit(
    session: AsyncSession,
    *,
    user_id: int,
    kind: EntryKind,
    amount: int,
    actor_id: int | None,
    reason: str | None,
    token_request_id: int | None = None,
    now: datetime | None = None,
) -> Balance:
    """Add ``amount`` (may be negative) of ``kind`` to the user's current period.

    Refused (422 on ``amount``) if it would take the column past the period's
    ``BALANCE_CEILING`` either way, so no run of grants or adjustments can
    overflow the balance (see :mod:`tokendesk.bounds`).
    """
    now = now or utcnow()
    balance = await get_balance(session, user_id=user_id, now=now)
    name = KIND_COLUMN[kind]
    if abs(getattr(balance, name) + amount) > BALANCE_CEILING:
        raise InvalidInput(
            f"amount: would take user {user_id}'s {name} tokens this period past "
            f"{BALANCE_CEILING:,}",
            field="amount",
        )
    column = getattr(Balance, name)
    await session.execute(
        update(Balance)
        .where(Balance.user_id == user_id)
        .values({column: column + amount, Balance.updated_at: now})
        .execution_options(synchronize_session=False)
    )
    session.add(
        LedgerEntry(
            organization_id=balance.organization_id,
            user_id=user_id,
            period_start=balance.period_start,
            kind=kind.value,
            amount=amount,
            actor_id=actor_id,
            reason=reason,
            token_request_id=token_request_id,
            created_at=now,
        )
    )
    await session.flush()
    await session.refresh(balance)
    emit(session, balance_event(balance, cause=kind.value))
    return balance
