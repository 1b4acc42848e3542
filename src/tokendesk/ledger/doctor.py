"""Recompute every cached balance from the ledger and report any difference."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from tokendesk.accounts.models import User
from tokendesk.ledger.models import (
    Balance,
    EntryKind,
    LedgerEntry,
    Reservation,
    ReservationStatus,
)
from tokendesk.token_requests.models import TokenRequest


@dataclass(frozen=True)
class Mismatch:
    user_id: int
    column: str
    cached: int
    ledger: int


def _sum_of(*kinds: EntryKind) -> ColumnElement[int]:
    return func.coalesce(
        func.sum(
            case((LedgerEntry.kind.in_([k.value for k in kinds]), LedgerEntry.amount), else_=0)
        ),
        0,
    )


async def check_balances(session: AsyncSession) -> list[Mismatch]:
    """Every balance column must equal the ledger for its current period.

    ``reserved`` is not a ledger quantity; it must equal the open holds.
    """
    ledger_sums = (
        select(
            LedgerEntry.user_id,
            _sum_of(EntryKind.ALLOCATION, EntryKind.ALLOCATION_CHANGE).label("allocation"),
            _sum_of(EntryKind.GRANT).label("granted"),
            _sum_of(EntryKind.ADJUSTMENT, EntryKind.CARRIED_DEBIT).label("adjusted"),
            (-_sum_of(EntryKind.USAGE)).label("used"),
        )
        .join(
            Balance,
            and_(
                Balance.user_id == LedgerEntry.user_id,
                Balance.period_start == LedgerEntry.period_start,
            ),
        )
        .group_by(LedgerEntry.user_id)
    )
    expected: dict[int, dict[str, int]] = defaultdict(
        lambda: {"allocation": 0, "granted": 0, "adjusted": 0, "used": 0, "reserved": 0}
    )
    for row in await session.execute(ledger_sums):
        expected[row.user_id].update(
            allocation=int(row.allocation),
            granted=int(row.granted),
            adjusted=int(row.adjusted),
            used=int(row.used),
        )
    holds = select(Reservation.user_id, func.sum(Reservation.amount)).where(
        Reservation.status == ReservationStatus.HELD
    )
    for user_id, amount in await session.execute(holds.group_by(Reservation.user_id)):
        expected[user_id]["reserved"] = int(amount)
    mismatches: list[Mismatch] = []
    for balance in await session.scalars(select(Balance).order_by(Balance.user_id)):
        want = expected[balance.user_id]
        for column, ledger_value in want.items():
            cached = int(getattr(balance, column))
            if cached != ledger_value:
                mismatches.append(Mismatch(balance.user_id, column, cached, ledger_value))
    return mismatches


Actor = aliased(User, name="actor")


async def dangling(session: AsyncSession, what: str, query: Select[int, int]) -> str:
    """``query`` selects (count, first id) of the rows that break a rule; '' if none do."""
    count, first = (await session.execute(query)).one()
    return f"{count} {what} (first: id {first})" if count else ""


def unresolved(found: Select[int, int], column: Any, target: Any) -> Select[int, int]:
    """The rows of ``found`` whose ``column`` names no row of ``target``."""
    return found.outerjoin(target, target.id == column).where(
        column.is_not(None), target.id.is_(None)
    )


async def check_references(session: AsyncSession) -> list[str]:
    """References that no foreign key guards must hold: the ledger's (see
    ``LedgerEntry``) and the decider of each token request."""
    found = select(func.count(), func.min(LedgerEntry.id)).select_from(LedgerEntry)
    problems = [
        await dangling(
            session,
            "ledger entries name an organization other than their user's",
            found.join(User, User.id == LedgerEntry.user_id).where(
                LedgerEntry.organization_id != User.organization_id
            ),
        ),
        await dangling(
            session,
            "ledger entries name an actor who is not a user",
            unresolved(found, LedgerEntry.actor_id, Actor),
        ),
        await dangling(
            session,
            "ledger entries name a token request that is missing or another user's",
            found.outerjoin(TokenRequest, TokenRequest.id == LedgerEntry.token_request_id).where(
                LedgerEntry.token_request_id.is_not(None),
                or_(TokenRequest.id.is_(None), TokenRequest.user_id != LedgerEntry.user_id),
            ),
        ),
        await dangling(
            session,
            "token requests name a decider who is not a user",
            unresolved(
                select(func.count(), func.min(TokenRequest.id)).select_from(TokenRequest),
                TokenRequest.decided_by_id,
                Actor,
            ),
        ),
    ]
    return [problem for problem in problems if problem]
