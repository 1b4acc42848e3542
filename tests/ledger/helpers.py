"""Shared helpers of the ledger tests."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select, update

from tokendesk.audit import service as audit
from tokendesk.db import Database
from tokendesk.ledger import service as ledger
from tokendesk.ledger.doctor import check_balances, check_references
from tokendesk.ledger.models import Balance, LedgerEntry


async def entries(database: Database, user_id: int) -> list[tuple[str, int, str | None]]:
    """(kind, amount, reason) of the user's ledger entries, oldest first."""
    async with database.transaction(write=False) as s:
        rows = await s.execute(
            select(LedgerEntry.kind, LedgerEntry.amount, LedgerEntry.reason)
            .where(LedgerEntry.user_id == user_id)
            .order_by(LedgerEntry.id)
        )
        return [(kind, amount, reason) for kind, amount, reason in rows]


async def count_entries(database: Database, **where: object) -> int:
    async with database.transaction(write=False) as s:
        query = select(func.count()).select_from(LedgerEntry).filter_by(**where)
        return int(await s.scalar(query) or 0)


async def assert_ledger_consistent(database: Database) -> None:
    """What ``doctor`` checks: balances equal the ledger, and the references of the
    ledger and the audit log (which carry few foreign keys) hold."""
    async with database.transaction(write=False) as s:
        assert await check_balances(s) == []
        assert await check_references(s) == []
        assert await audit.check_references(s) == []


async def end_period(database: Database, user_id: int, **values: int) -> datetime:
    """Move the user's period (and its ledger) a month back, so it has ended by now;
    returns the start of the current period, the one to roll over to."""
    async with database.transaction() as s:
        start = (await ledger.get_balance(s, user_id=user_id)).period_start
        old_start, old_end = start - timedelta(days=31), start - timedelta(seconds=1)
        await s.execute(
            update(Balance)
            .where(Balance.user_id == user_id)
            .values(period_start=old_start, period_end=old_end, **values)
        )
        await s.execute(
            update(LedgerEntry).where(LedgerEntry.user_id == user_id).values(period_start=old_start)
        )
    return start
