"""Holds on a member's tokens while a call is in flight: hold, settle, release, return, expire."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.bounds import DB_INT_MAX
from tokendesk.db import bound_rows, dialect_of, rows_bound, run_core, utcnow
from tokendesk.errors import InsufficientTokens, InvalidInput, NotFound
from tokendesk.ledger.balances import get_balance
from tokendesk.ledger.locks import lock_in_user_order
from tokendesk.ledger.models import (
    BALANCES,
    GIVEN,
    REMAINING,
    RESERVATIONS,
    Balance,
    Reservation,
    ReservationStatus,
)


def check_hold(amount: int, at_least: int | None = None) -> None:
    """Refuse (422, naming the field) a hold that could not be written or makes no sense,
    before it touches the database or shares a batch with anyone else's."""
    if not 0 < amount <= DB_INT_MAX:
        # A non-positive hold would raise the balance instead of holding any of it.
        raise InvalidInput(f"amount: must be from 1 to {DB_INT_MAX}, got {amount}", field="amount")
    if at_least is not None and not 0 < at_least <= amount:
        raise InvalidInput(
            f"at_least: must be from 1 to the amount ({amount}), got {at_least}", field="at_least"
        )


def insufficient(*, remaining: int, needed: int, held: int) -> InsufficientTokens:
    """The refusal of a hold of ``needed`` tokens, as every path that holds words it;
    ``held`` is what the member's calls in flight hold (some of it may come back)."""
    return InsufficientTokens(
        f"not enough tokens: {max(remaining, 0)} left, {needed} needed",
        could_wait=remaining + held >= needed,
    )


async def reserve(
    session: AsyncSession,
    *,
    user_id: int,
    amount: int,
    at_least: int | None = None,
    ttl_seconds: int = 600,
    now: datetime | None = None,
) -> Reservation:
    """Hold ``amount`` tokens, or refuse with 402 if fewer remain.

    With ``at_least``, hold what remains, up to ``amount``, and refuse only if
    that is less than ``at_least``: the reservation's amount is what was held.
    The check and the hold are one conditional UPDATE (after locking the row,
    where the amount depends on what remains), so concurrent holds can never
    together exceed the balance.
    """
    reservation, _ = await reserve_left(
        session,
        user_id=user_id,
        amount=amount,
        at_least=at_least,
        ttl_seconds=ttl_seconds,
        now=now,
    )
    return reservation


async def reserve_left(
    session: AsyncSession,
    *,
    user_id: int,
    amount: int,
    at_least: int | None = None,
    ttl_seconds: int = 600,
    now: datetime | None = None,
) -> tuple[Reservation, tuple[int, int, datetime]]:
    """:func:`reserve`, and the balance the hold leaves: remaining, what the period
    gives (given_of) and the period's end, read by the statement that held."""
    check_hold(amount, at_least)
    now = now or utcnow()
    balance = await get_balance(session, user_id=user_id, now=now)
    needed = amount if at_least is None else at_least
    if at_least is not None:
        remaining = await session.scalar(
            select(REMAINING).where(Balance.user_id == user_id).with_for_update()
        )
        amount = min(amount, max(remaining or 0, needed))
    held = await session.execute(
        update(Balance)
        .where(Balance.user_id == user_id, amount <= REMAINING)
        .values(reserved=Balance.reserved + amount, updated_at=now)
        .returning(REMAINING, GIVEN, Balance.period_end)
        .execution_options(synchronize_session=False)
    )
    left = held.first()
    if left is None:
        await session.refresh(balance)
        raise insufficient(remaining=balance.remaining, needed=needed, held=balance.reserved)
    reservation = Reservation(
        organization_id=balance.organization_id,
        user_id=user_id,
        amount=amount,
        status=ReservationStatus.HELD.value,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_seconds),
    )
    session.add(reservation)
    await session.flush()
    remaining, given, resets_at = left
    return reservation, (remaining, given, resets_at)


async def _close_hold(
    session: AsyncSession, *, reservation_id: int, status: ReservationStatus, settled: int | None
) -> Reservation:
    # The balance before the reservation, as settlements and expiry take them.
    await lock_in_user_order(
        session, select(Reservation.user_id).where(Reservation.id == reservation_id)
    )
    closed = await session.execute(
        update(Reservation)
        .where(Reservation.id == reservation_id, Reservation.status == ReservationStatus.HELD)
        .values(status=status.value, settled_amount=settled)
        .returning(Reservation.user_id, Reservation.amount)
        .execution_options(synchronize_session=False)
    )
    row = closed.first()
    if row is None:
        existing = await session.get(Reservation, reservation_id)
        if existing is None:
            raise NotFound(f"reservation {reservation_id} not found")
        # Already settled, released or expired: the hold is gone, nothing to return.
        return existing
    user_id, amount = row
    await session.execute(
        update(Balance)
        .where(Balance.user_id == user_id)
        .values(reserved=Balance.reserved - amount, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    reservation = await session.get(Reservation, reservation_id)
    assert reservation is not None
    await session.refresh(reservation)
    return reservation


async def release(session: AsyncSession, *, reservation_id: int) -> Reservation:
    """Give a hold back untouched (the upstream call failed before any output)."""
    return await _close_hold(
        session, reservation_id=reservation_id, status=ReservationStatus.RELEASED, settled=None
    )


async def settle(session: AsyncSession, *, reservation_id: int, actual: int) -> Reservation:
    """Close a hold; the caller records ``actual`` as usage (see metering)."""
    if actual < 0:
        raise InvalidInput(f"actual: must not be negative, got {actual}", field="actual")
    return await _close_hold(
        session, reservation_id=reservation_id, status=ReservationStatus.SETTLED, settled=actual
    )


RETURNED = ("uid", "amount")


@cache
def _return_holds(dialect: str) -> Any:
    returned = bound_rows(dialect, "returned", *RETURNED)
    return (
        update(BALANCES)
        .where(BALANCES.c.user_id == returned.c.uid)
        .values(reserved=BALANCES.c.reserved - returned.c.amount, updated_at=bindparam("now"))
    )


async def return_holds(
    session: AsyncSession, amounts: Mapping[int, int], *, now: datetime | None = None
) -> None:
    """Take closed holds (user id -> tokens) off ``reserved``: one UPDATE for all users."""
    if not amounts:
        return
    dialect = dialect_of(session)
    params = rows_bound(dialect, "returned", RETURNED, sorted(amounts.items()))
    await run_core(session, _return_holds(dialect), {**params, "now": now or utcnow()})


SETTLED = ("rid", "actual")


@cache
def _settle_holds(dialect: str) -> Any:
    """Close the holds still open, each with its actual amount; returns what each held."""
    settled = bound_rows(dialect, "settled", *SETTLED)
    r = RESERVATIONS
    return (
        update(r)
        .where(r.c.id == settled.c.rid, r.c.status == ReservationStatus.HELD.value)
        .values(status=ReservationStatus.SETTLED.value, settled_amount=settled.c.actual)
        .returning(r.c.id, r.c.user_id, r.c.amount)
    )


async def settle_holds(session: AsyncSession, actual: Iterable[tuple[int, int]]) -> None:
    """Close many holds, each a (reservation id, tokens actually used), and give back
    what they held, in two statements; a hold already closed is left as it is.

    The caller locks the holds' balances first (:func:`lock_in_user_order`) and records
    the usage (metering): the tokens were used even if a hold had expired.
    """
    dialect = dialect_of(session)
    params = rows_bound(dialect, "settled", SETTLED, sorted(actual))
    closed = (await run_core(session, _settle_holds(dialect), params)).all()
    returned: dict[int, int] = defaultdict(int)
    for _, user_id, amount in closed:
        returned[user_id] += amount
    await return_holds(session, returned)


async def expire_holds(session: AsyncSession, *, now: datetime | None = None) -> int:
    """Release holds nobody settled before they expired (a crashed or stuck call)."""
    now = now or utcnow()
    expired = (Reservation.status == ReservationStatus.HELD, Reservation.expires_at <= now)
    # Balances before reservations, as settlements take them: a hold settled just as it
    # expires would otherwise be locked by each while it waits for the other's row.
    await lock_in_user_order(session, select(Reservation.user_id).where(*expired))
    rows = (
        await session.execute(
            update(Reservation)
            .where(*expired)
            .values(status=ReservationStatus.EXPIRED.value)
            .returning(Reservation.user_id, Reservation.amount)
            .execution_options(synchronize_session=False)
        )
    ).all()
    per_user: dict[int, int] = defaultdict(int)
    for user_id, amount in rows:
        per_user[user_id] += amount
    await return_holds(session, per_user, now=now)
    return len(rows)
