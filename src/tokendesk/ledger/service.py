"""Balances on an append-only ledger: periods, resets, credits and reservations.

Every change to a balance is a ledger entry written in the same transaction as
the cached ``balances`` row, so ``doctor`` can always prove the two agree.
Concurrency is handled by conditional updates, never by read-modify-write, and
a transaction that changes several balances takes their rows in user order
(:func:`lock_in_user_order`), so two transactions never deadlock on them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import cache
from typing import Any, Protocol, cast

from sqlalchemy import Select, Table, bindparam, case, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.models import Organization, Team, User
from tokendesk.bounds import BALANCE_CEILING, DB_INT_MAX
from tokendesk.db import bound_rows, dialect_of, in_list, listed, rows_bound, run_core, utcnow
from tokendesk.errors import InsufficientTokens, InvalidInput, NotFound
from tokendesk.events.bus import Event, emit
from tokendesk.ledger.models import (
    REMAINING,
    Balance,
    EntryKind,
    LedgerEntry,
    Reservation,
    ReservationStatus,
)
from tokendesk.ledger.periods import period_bounds, zone

# Which cached column each entry kind moves, and with which sign.
KIND_COLUMN: dict[str, str] = {
    EntryKind.ALLOCATION: "allocation",
    EntryKind.ALLOCATION_CHANGE: "allocation",
    EntryKind.GRANT: "granted",
    EntryKind.ADJUSTMENT: "adjusted",
    # A debit carried from the last period opens the new one as an adjustment would.
    EntryKind.CARRIED_DEBIT: "adjusted",
}


def resolve_allocation(user: User, team: Team | None, org: Organization) -> int:
    """User override, else team default, else organization default."""
    if user.allocation_override is not None:
        return user.allocation_override
    if team is not None and team.default_allocation is not None:
        return team.default_allocation
    return org.default_allocation


def allocation_expression(org_default: int) -> Any:
    """SQL form of :func:`resolve_allocation` for the balance row's user (set-based resets)."""
    return (
        select(func.coalesce(User.allocation_override, Team.default_allocation, org_default))
        .select_from(User)
        .outerjoin(Team, Team.id == User.team_id)
        .where(User.id == Balance.user_id)
        .scalar_subquery()
    )


class BalanceView(Protocol):
    """What events need of a balance: an ORM row, or a plain row read by a bulk query."""

    @property
    def user_id(self) -> int: ...
    @property
    def organization_id(self) -> int: ...
    @property
    def period_start(self) -> datetime: ...
    @property
    def period_end(self) -> datetime: ...
    @property
    def allocation(self) -> int: ...
    @property
    def granted(self) -> int: ...
    @property
    def adjusted(self) -> int: ...
    @property
    def used(self) -> int: ...
    @property
    def reserved(self) -> int: ...
    @property
    def remaining(self) -> int: ...


def balance_event(balance: BalanceView, *, cause: str) -> Event:
    return Event(
        type="balance.changed",
        organization_id=balance.organization_id,
        user_id=balance.user_id,
        data={"user_id": balance.user_id, "cause": cause, **balance_snapshot(balance)},
    )


def balance_snapshot(balance: BalanceView) -> dict[str, Any]:
    return {
        "allocation": balance.allocation,
        "granted": balance.granted,
        "adjusted": balance.adjusted,
        "used": balance.used,
        "reserved": balance.reserved,
        "remaining": balance.remaining,
        "period_start": balance.period_start.isoformat(),
        "next_reset_at": balance.period_end.isoformat(),
    }


async def open_balance(
    session: AsyncSession,
    *,
    user: User,
    org: Organization,
    team: Team | None,
    actor_id: int | None,
    now: datetime | None = None,
) -> Balance:
    """Start a new user's current period with the full allocation."""
    now = now or utcnow()
    start, end = period_bounds(now, reset_day=org.reset_day, timezone=org.timezone)
    allocation = resolve_allocation(user, team, org)
    balance = Balance(
        user_id=user.id,
        organization_id=org.id,
        period_start=start,
        period_end=end,
        allocation=allocation,
        granted=0,
        adjusted=0,
        used=0,
        reserved=0,
        updated_at=now,
    )
    session.add(balance)
    session.add(
        LedgerEntry(
            organization_id=org.id,
            user_id=user.id,
            period_start=start,
            kind=EntryKind.ALLOCATION.value,
            amount=allocation,
            actor_id=actor_id,
            reason="period opened",
            created_at=now,
        )
    )
    await session.flush()
    return balance


async def rollover_due(
    session: AsyncSession,
    *,
    now: datetime | None = None,
    user_ids: Sequence[int] | None = None,
    organization_id: int | None = None,
) -> int:
    """Move every balance whose period has ended into the current period.

    The conditional ``UPDATE ... WHERE period_end <= now`` is what makes a reset
    happen exactly once: a second process racing this one updates no rows,
    so it writes no ledger entries either. Tokens granted or adjusted in the old
    period end with it; held reservations carry over to the new one. A balance
    that ended below zero (held tokens aside, as they carry over) opens the new
    period with that debit, a ``carried_debit`` entry, unless the organization
    turned carrying over off.
    """
    now = now or utcnow()
    # The rows to reset, locked in user order (PostgreSQL) before any is updated, as
    # every transaction that changes several balances takes them (see lock_in_user_order).
    due = (
        select(Balance.organization_id)
        .where(Balance.period_end <= now)
        .order_by(Balance.user_id)
        .with_for_update()
    )
    if user_ids is not None:
        if not user_ids:
            return 0
        due = due.where(Balance.user_id.in_(user_ids))
    if organization_id is not None:
        due = due.where(Balance.organization_id == organization_id)
    org_ids = sorted(set((await session.scalars(due)).all()))
    total = 0
    for org_id in org_ids:
        org = await session.get(Organization, org_id)
        if org is None:
            continue
        start, end = period_bounds(now, reset_day=org.reset_day, timezone=org.timezone)
        # Right of SET, the columns are the old period's values.
        ended_with = Balance.allocation + Balance.granted + Balance.adjusted - Balance.used
        carried = case((ended_with < 0, ended_with), else_=0) if org.carry_over_debt else 0
        stmt = (
            update(Balance)
            .where(Balance.organization_id == org_id, Balance.period_end <= now)
            .values(
                period_start=start,
                period_end=end,
                allocation=allocation_expression(org.default_allocation),
                granted=0,
                adjusted=carried,
                used=0,
                updated_at=now,
            )
            .returning(Balance.user_id, Balance.allocation, Balance.adjusted)
            .execution_options(synchronize_session=False)
        )
        if user_ids is not None:
            stmt = stmt.where(Balance.user_id.in_(user_ids))
        rows = (await session.execute(stmt)).all()
        if not rows:
            continue
        debits = {user_id: debit for user_id, _, debit in rows if debit}
        label = carried_from(start, timezone=org.timezone)
        entries = [
            {
                "organization_id": org_id,
                "user_id": user_id,
                "period_start": start,
                "kind": EntryKind.ALLOCATION.value,
                "amount": allocation,
                "actor_id": None,
                "reason": "monthly reset",
                "created_at": now,
            }
            for user_id, allocation, _ in rows
        ]
        entries += [
            {
                "organization_id": org_id,
                "user_id": user_id,
                "period_start": start,
                "kind": EntryKind.CARRIED_DEBIT.value,
                "amount": debit,
                "actor_id": None,
                "reason": f"carried from {label}",
                "created_at": now,
            }
            for user_id, debit in debits.items()
        ]
        await session.execute(insert(LedgerEntry), entries)
        for user_id, allocation, debit in rows:
            emit(
                session,
                Event(
                    type="period.reset",
                    organization_id=org_id,
                    user_id=user_id,
                    data={
                        "user_id": user_id,
                        "allocation": allocation,
                        "carried": debit,
                        "carried_from": label,
                        "period_start": start.isoformat(),
                        "next_reset_at": end.isoformat(),
                    },
                ),
            )
        total += len(rows)
    # Objects already loaded in this session may now be stale.
    if total:
        session.expire_all()
    return total


def carried_from(period_start: datetime, *, timezone: str) -> str:
    """The month a debit carried into the period starting at ``period_start`` came
    from: the month the day before it falls in ("November")."""
    return (period_start.astimezone(zone(timezone)) - timedelta(days=1)).strftime("%B")


async def carried_debit(session: AsyncSession, *, balance: Balance) -> int:
    """The debit the balance's current period opened with (0 or negative)."""
    amount = await session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
            LedgerEntry.user_id == balance.user_id,
            LedgerEntry.period_start == balance.period_start,
            LedgerEntry.kind == EntryKind.CARRIED_DEBIT.value,
        )
    )
    return int(amount or 0)


async def get_balance(
    session: AsyncSession, *, user_id: int, now: datetime | None = None
) -> Balance:
    """The user's balance for the current period, rolling it over first if it ended."""
    now = now or utcnow()
    balance = await session.get(Balance, user_id)
    if balance is None:
        raise NotFound(f"user {user_id} has no balance")
    if balance.period_end <= now:
        await rollover_due(session, now=now, user_ids=[user_id])
        await session.refresh(balance)
    return balance


async def get_balances(
    session: AsyncSession, *, user_ids: Iterable[int], now: datetime | None = None
) -> dict[int, Balance]:
    ids = list(set(user_ids))
    if not ids:
        return {}
    now = now or utcnow()
    await rollover_due(session, now=now, user_ids=ids)
    rows = await session.scalars(select(Balance).where(Balance.user_id.in_(ids)))
    return {row.user_id: row for row in rows}


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
        f"not enough tokens: {max(remaining, 0)} left, {needed} needed; "
        "ask for more with a token request",
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
        .returning(Balance.organization_id)
        .execution_options(synchronize_session=False)
    )
    if held.first() is None:
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
    return reservation


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


BALANCES = cast(Table, Balance.__table__)


RETURNED = ("uid", "amount")


@cache
def _lock_in_user_order(dialect: str) -> Any:
    return (
        select(BALANCES.c.user_id)
        .where(in_list(dialect, BALANCES.c.user_id))
        .order_by(BALANCES.c.user_id)
        .with_for_update()
    )


async def lock_in_user_order(session: AsyncSession, users: Iterable[int] | Select[Any]) -> None:
    """PostgreSQL: lock the balances of ``users`` (ids, or a query of user ids) in user
    order, as every transaction that changes several balances does before it
    changes any.

    A set-based UPDATE takes its rows in whatever order its plan visits them, and
    one-by-one updates in the order of their callers: two transactions could then
    each hold a row the other waits for. On SQLite one writer at a time has the
    whole database, so there is nothing to order (and nothing runs).
    """
    dialect = dialect_of(session)
    if dialect != "postgresql":
        return
    if isinstance(users, Select):
        await session.execute(
            select(Balance.user_id)
            .where(Balance.user_id.in_(users))
            .order_by(Balance.user_id)
            .with_for_update()
        )
        return
    ids = set(users)
    if ids:
        await run_core(session, _lock_in_user_order(dialect), {"ids": listed(dialect, ids)})


def users_of(organization_id: int) -> Select[Any]:
    """The organization's users, as a query (for :func:`lock_in_user_order`)."""
    return select(Balance.user_id).where(Balance.organization_id == organization_id)


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
