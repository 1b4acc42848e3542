"""The general way to hold, on every backend: row locks in a transaction of its own.

It rolls ended periods over, so it decides every request, and it is what the
quick strategies fall back to (see :mod:`.operation`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from functools import cache
from typing import Any

from sqlalchemy import bindparam, insert, update
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.bounds import DB_INT_MAX
from tokendesk.db import (
    Database,
    bound_rows,
    dialect_of,
    is_outage,
    rows_bound,
    run_core,
    utcnow,
)
from tokendesk.errors import AppError
from tokendesk.ledger.holds.base import Hold, HoldRequest
from tokendesk.ledger.locks import lock_in_user_order
from tokendesk.ledger.models import (
    BALANCES,
    GIVEN,
    REMAINING,
    RESERVATIONS,
    ReservationStatus,
)
from tokendesk.ledger.reservations import reserve_left

log = logging.getLogger(__name__)

WANTED = ("uid", "amount")

HoldInSession = Callable[..., Awaitable[Sequence[Hold | AppError]]]


@cache
def _hold_totals(dialect: str) -> Any:
    """Hold each user's total where the whole of it fits, in one conditional UPDATE."""
    wanted = bound_rows(dialect, "wanted", *WANTED)
    return (
        update(BALANCES)
        .where(
            BALANCES.c.user_id == wanted.c.uid,
            BALANCES.c.period_end > bindparam("now"),
            wanted.c.amount <= REMAINING,
        )
        .values(reserved=BALANCES.c.reserved + wanted.c.amount, updated_at=bindparam("now"))
        .returning(BALANCES.c.user_id, REMAINING, GIVEN, BALANCES.c.period_end)
    )


async def hold_many(
    session: AsyncSession, requests: Sequence[HoldRequest], *, ttl_seconds: int
) -> list[Hold | AppError]:
    """Hold tokens for many calls in a few statements; one result (id or error) per request.

    Requests are summed per user, and one conditional UPDATE holds each user's
    total only where the whole total fits. Users whose total does not fit (or
    whose period has ended) go through the exact one-by-one path, which rolls
    periods over and refuses precisely the calls that cannot be covered.
    """
    now = utcnow()
    totals: dict[int, int] = defaultdict(int)
    for request in requests:
        totals[request.user_id] += request.amount
    # A total the database could not hold in a number is taken call by call instead.
    totals = {user: total for user, total in totals.items() if total <= DB_INT_MAX}
    dialect = dialect_of(session)
    await lock_in_user_order(session, totals)
    params = rows_bound(dialect, "wanted", WANTED, sorted(totals.items()))
    held_users = {
        user_id: (remaining, given, resets_at)
        for user_id, remaining, given, resets_at in await run_core(
            session, _hold_totals(dialect), {**params, "now": now}
        )
    }
    results: list[Hold | AppError | None] = [None] * len(requests)
    fast = [i for i, r in enumerate(requests) if r.user_id in held_users]
    if fast:
        expires = now + timedelta(seconds=ttl_seconds)
        ids = await session.scalars(
            # Core tables here and below: the ORM's bulk machinery costs more than the SQL.
            insert(RESERVATIONS).returning(RESERVATIONS.c.id, sort_by_parameter_order=True),
            [
                {
                    "organization_id": requests[i].organization_id,
                    "user_id": requests[i].user_id,
                    "amount": requests[i].amount,
                    "status": ReservationStatus.HELD.value,
                    "created_at": now,
                    "expires_at": expires,
                }
                for i in fast
            ],
        )
        for i, reservation_id in zip(fast, ids.all(), strict=True):
            results[i] = Hold(reservation_id, requests[i].amount, *held_users[requests[i].user_id])
    rest = [i for i, r in enumerate(requests) if r.user_id not in held_users]
    if rest:
        exact = await reserve_each(session, [requests[i] for i in rest], ttl_seconds=ttl_seconds)
        for i, result in zip(rest, exact, strict=True):
            results[i] = result
    return [result for result in results if result is not None]


async def reserve_each(
    session: AsyncSession, requests: Sequence[HoldRequest], *, ttl_seconds: int
) -> list[Hold | AppError]:
    """The exact path, call by call (:func:`ledger.reserve`): rolls an ended period over
    first, shrinks the holds that may shrink, and refuses precisely the calls that
    cannot be covered (402 with the amounts).

    Users are taken in id order (each user's calls in batch order), as every batch
    that locks balances takes them: in arrival order, a batch could lock one user
    while a settlement held another and each wait for the other (PostgreSQL).
    """
    now = utcnow()
    results: list[Hold | AppError | None] = [None] * len(requests)
    for i in sorted(range(len(requests)), key=lambda i: requests[i].user_id):
        request = requests[i]
        try:
            async with session.begin_nested():
                reservation, left = await reserve_left(
                    session,
                    user_id=request.user_id,
                    amount=request.amount,
                    at_least=request.at_least,
                    ttl_seconds=ttl_seconds,
                    now=now,
                )
            results[i] = Hold(reservation.id, reservation.amount, *left)
        except AppError as exc:
            results[i] = exc
    return [result for result in results if result is not None]


class GeneralHolds:
    """Holds in a normal transaction, each call getting its own result or error."""

    def __init__(self, database: Database, *, ttl_seconds: int) -> None:
        self.database = database
        self.ttl_seconds = ttl_seconds

    async def hold(
        self, requests: Sequence[HoldRequest], *, fits_tried: bool = False
    ) -> list[Hold | Exception]:
        """One result per request, in order; never raises.

        ``fits_tried``: a quick strategy already tried each user's fit, so the calls
        go one by one (:func:`reserve_each`) instead of by user totals first.
        """
        return await self._hold(requests, reserve_each if fits_tried else hold_many)

    async def _hold(
        self, requests: Sequence[HoldRequest], hold: HoldInSession
    ) -> list[Hold | Exception]:
        try:
            async with self.database.transaction() as session:
                return list(await hold(session, requests, ttl_seconds=self.ttl_seconds))
        except Exception as exc:
            if len(requests) == 1 or is_outage(exc):
                # Alone, or the database is out of reach for all of them alike.
                return [exc] * len(requests)
            # One call's failure must not reach the others: each again on its own, as
            # the settler does, so only the call that caused it gets the error.
            log.warning("hold of %d calls failed; holding one by one", len(requests))
            return [(await self._hold([r], reserve_each))[0] for r in requests]
