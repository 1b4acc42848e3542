"""All SQL of the gateway's holds and settlements (see :mod:`holds` for when it runs).

A hold must be exact under concurrency: one conditional UPDATE both checks and
reserves, and a hold that shrinks to what remains reads it where nothing else
can change it (SQLite's write lock, PostgreSQL's row lock). SQLite holds run on a
plain connection in microseconds (:func:`hold_each`); PostgreSQL holds are one
statement, one round trip (:func:`hold_in_one_round_trip`). Both hold, shrink or
refuse (with the exact message) where the balance's period is current, so a
refusal costs no more than a hold, and leave the rest to the general path
(:func:`hold_many`), which rolls periods over. Settlements close many holds and
record their usage in a handful of set-based statements (:func:`settle_many`).
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Table,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.bounds import DB_INT_MAX
from tokendesk.db import (
    Database,
    UTCDateTime,
    bound_rows,
    dialect_of,
    rows_bound,
    run_core,
    sqlite_timestamp,
    utcnow,
)
from tokendesk.errors import AppError
from tokendesk.ledger import service as ledger
from tokendesk.ledger.models import REMAINING_SQL, Reservation, ReservationStatus
from tokendesk.metering.service import UsageInput, record_usage

RESERVATIONS = cast(Table, Reservation.__table__)
BALANCES = ledger.BALANCES


@dataclass(frozen=True)
class HoldRequest:
    """A call's hold: all of ``amount``, or with ``at_least`` what remains up to it."""

    user_id: int
    organization_id: int
    amount: int
    at_least: int | None = None

    @property
    def least(self) -> int:
        """The smallest hold that will do."""
        return self.amount if self.at_least is None else self.at_least


@dataclass(frozen=True)
class Hold:
    """A hold taken: its reservation and the tokens it holds."""

    id: int
    amount: int


WANTED = ("uid", "amount")


@cache
def _hold_totals(dialect: str) -> Any:
    """Hold each user's total where the whole of it fits, in one conditional UPDATE."""
    wanted = bound_rows(dialect, "wanted", *WANTED)
    return (
        update(BALANCES)
        .where(
            BALANCES.c.user_id == wanted.c.uid,
            BALANCES.c.period_end > bindparam("now"),
            wanted.c.amount <= ledger.REMAINING,
        )
        .values(reserved=BALANCES.c.reserved + wanted.c.amount, updated_at=bindparam("now"))
        .returning(BALANCES.c.user_id)
    )


CALLS = ("org", "uid", "amount", "least")


@cache
def _hold_in_one_statement() -> Any:
    """PostgreSQL: hold what each user's calls want where that can be decided at once,
    insert their reservations, and return the users refused, in one statement.

    A user's calls are held in full where their total fits, and a user's only call
    in the batch down to what remains where that is at least its ``least``; every
    call of a user whose remaining covers none of them is refused. The rest (a
    user's several calls that fit only in part, an ended period, no balance) is
    left for :func:`hold_many`. Rows are ``(id, user, amount, None, None)`` per hold
    and ``(None, user, None, remaining, reserved)`` per user refused.
    """
    now = bindparam("now", type_=UTCDateTime())
    calls = bound_rows("postgresql", "calls", *CALLS)
    wanted = (
        select(
            calls.c.uid,
            func.sum(calls.c.amount).label("total"),
            func.min(calls.c.least).label("least"),
            func.count().label("calls"),
        )
        .group_by(calls.c.uid)
        .cte("wanted")
    )
    # The rows are locked in user order first, as every other batch locks them. What
    # this reads is each balance as it stands once locked, and stays so until the
    # statement ends: the decisions below are exact.
    locked = (
        select(BALANCES.c.user_id, ledger.REMAINING.label("remaining"), BALANCES.c.reserved)
        .where(BALANCES.c.user_id.in_(select(wanted.c.uid)), BALANCES.c.period_end > now)
        .order_by(BALANCES.c.user_id)
        .with_for_update()
        .cte("locked")
    )
    fits = wanted.c.total <= locked.c.remaining
    decided = (
        select(
            wanted.c.uid,
            case((fits, wanted.c.total), else_=locked.c.remaining).cast(BigInteger).label("amount"),
        )
        .join_from(wanted, locked, locked.c.user_id == wanted.c.uid)
        .where(or_(fits, and_(wanted.c.calls == 1, wanted.c.least <= locked.c.remaining)))
        .cte("decided")
    )
    held = (
        update(BALANCES)
        .where(BALANCES.c.user_id == decided.c.uid, decided.c.amount <= ledger.REMAINING)
        .values(reserved=BALANCES.c.reserved + decided.c.amount, updated_at=now)
        .returning(BALANCES.c.user_id, decided.c.amount)
        .cte("held")
    )
    refused = (
        select(locked.c.user_id, locked.c.remaining, locked.c.reserved)
        .join_from(wanted, locked, locked.c.user_id == wanted.c.uid)
        .where(locked.c.remaining < wanted.c.least)
        .cte("refused")
    )
    source = select(
        calls.c.org,
        calls.c.uid,
        # A user's total held in full covers each call's amount; a lone call shrunk
        # to what remained gets all of it.
        func.least(calls.c.amount, held.c.amount),
        literal(ReservationStatus.HELD.value),
        now,
        bindparam("expires", type_=UTCDateTime()),
    ).join_from(calls, held, held.c.user_id == calls.c.uid)
    columns = ["organization_id", "user_id", "amount", "status", "created_at", "expires_at"]
    inserted = (
        insert(RESERVATIONS)
        .from_select(columns, source)
        .returning(RESERVATIONS.c.id, RESERVATIONS.c.user_id, RESERVATIONS.c.amount)
        .cte("inserted")
    )
    nothing = null().cast(BigInteger)
    return union_all(
        select(inserted.c.id, inserted.c.user_id, inserted.c.amount, nothing, nothing),
        select(nothing, refused.c.user_id, nothing, refused.c.remaining, refused.c.reserved),
    )


def _holdable(request: HoldRequest) -> bool:
    """What the quick paths take; anything else is left for ledger.reserve to refuse."""
    return 0 < request.least <= request.amount <= DB_INT_MAX


async def hold_in_one_round_trip(
    database: Database, requests: list[HoldRequest], *, ttl_seconds: int
) -> list[Hold | AppError | None]:
    """PostgreSQL: each call's hold or refusal, or None where it could not be decided
    at once (see :func:`_hold_in_one_statement`): those are left for :func:`hold_many`.

    One statement outside any transaction block, so the database is asked once
    (the UPDATE and the INSERT it feeds commit together, as one statement does).
    """
    now = utcnow()
    calls = sorted(
        (r.organization_id, r.user_id, r.amount, r.least) for r in requests if _holdable(r)
    )
    params = {
        **rows_bound("postgresql", "calls", CALLS, calls),
        "now": now,
        "expires": now + timedelta(seconds=ttl_seconds),
    }
    async with database.write_engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        rows = (await connection.execute(_hold_in_one_statement(), params)).all()
    held: dict[int, list[Hold]] = defaultdict(list)
    refused: dict[int, tuple[int, int]] = {}
    for reservation_id, user_id, amount, remaining, reserved in rows:
        if reservation_id is None:
            refused[user_id] = (remaining, reserved)
        else:
            held[user_id].append(Hold(reservation_id, amount))
    results: list[Hold | AppError | None] = []
    for request in requests:
        holds = held.get(request.user_id)
        if holds and _holdable(request):
            # A user's calls of the same amount are interchangeable: any of their holds
            # will do. A hold of another amount is a lone call's, shrunk.
            same = next((n for n, h in enumerate(holds) if h.amount == request.amount), 0)
            results.append(holds.pop(same))
        elif request.user_id in refused and _holdable(request):
            remaining, reserved = refused[request.user_id]
            results.append(
                ledger.insufficient(remaining=remaining, needed=request.least, held=reserved)
            )
        else:
            results.append(None)
    return results


async def hold_many(
    session: AsyncSession, requests: list[HoldRequest], *, ttl_seconds: int
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
    await ledger.lock_in_user_order(session, totals)
    params = rows_bound(dialect, "wanted", WANTED, sorted(totals.items()))
    held_users = set(
        (await run_core(session, _hold_totals(dialect), {**params, "now": now})).scalars()
    )
    results: list[Hold | AppError] = [Hold(0, 0)] * len(requests)
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
            results[i] = Hold(reservation_id, requests[i].amount)
    rest = [i for i, r in enumerate(requests) if r.user_id not in held_users]
    if rest:
        exact = await reserve_each(session, [requests[i] for i in rest], ttl_seconds=ttl_seconds)
        for i, result in zip(rest, exact, strict=True):
            results[i] = result
    return results


async def reserve_each(
    session: AsyncSession, requests: list[HoldRequest], *, ttl_seconds: int
) -> list[Hold | AppError]:
    """The exact path, call by call (:func:`ledger.reserve`): rolls an ended period over
    first, shrinks the holds that may shrink, and refuses precisely the calls that
    cannot be covered (402 with the amounts).

    Users are taken in id order (each user's calls in batch order), as every batch
    that locks balances takes them: in arrival order, a batch could lock one user
    while a settlement held another and each wait for the other (PostgreSQL).
    """
    now = utcnow()
    results: list[Hold | AppError] = [Hold(0, 0)] * len(requests)
    for i in sorted(range(len(requests)), key=lambda i: requests[i].user_id):
        request = requests[i]
        try:
            async with session.begin_nested():
                reservation = await ledger.reserve(
                    session,
                    user_id=request.user_id,
                    amount=request.amount,
                    at_least=request.at_least,
                    ttl_seconds=ttl_seconds,
                    now=now,
                )
            results[i] = Hold(reservation.id, reservation.amount)
        except AppError as exc:
            results[i] = exc
    return results


# The hold of ledger.reserve, spelled for SQLite's own driver (see hold_each): the same
# conditional UPDATE, then the reservation row.
_HOLD_SQL = (
    "UPDATE balances SET reserved = reserved + ?1, updated_at = ?2 "
    f"WHERE user_id = ?3 AND period_end > ?2 AND ?1 <= {REMAINING_SQL}"
)
_BALANCE_SQL = f"SELECT {REMAINING_SQL}, reserved, period_end > ?2 FROM balances WHERE user_id = ?1"
_RESERVATION_SQL = (
    "INSERT INTO reservations (organization_id, user_id, amount, status, created_at, expires_at)"
    f" VALUES (?, ?, ?, '{ReservationStatus.HELD.value}', ?, ?)"
)


def hold_each(
    connection: sqlite3.Connection, requests: list[HoldRequest], *, ttl_seconds: int
) -> list[Hold | AppError | None]:
    """SQLite: hold or refuse each request in turn, in batch order; None where only
    :func:`hold_many` can decide (no balance, or its period has ended: it rolls
    periods over).

    Runs inside :meth:`Database.quick_write`, so each statement costs microseconds,
    and nothing else writes until it commits: what it reads of a balance stays true.
    """
    now = utcnow()
    at = sqlite_timestamp(now)
    expires = sqlite_timestamp(now + timedelta(seconds=ttl_seconds))
    results: list[Hold | AppError | None] = []
    for request in requests:
        result = _hold_one(connection, request, at) if _holdable(request) else None
        if isinstance(result, int):
            row = (request.organization_id, request.user_id, result, at, expires)
            reservation_id = connection.execute(_RESERVATION_SQL, row).lastrowid
            assert reservation_id is not None
            results.append(Hold(reservation_id, result))
        else:
            results.append(result)
    return results


def _hold_one(
    connection: sqlite3.Connection, request: HoldRequest, at: str
) -> int | AppError | None:
    """The tokens held on the request's balance, its refusal, or None (see hold_each)."""
    if connection.execute(_HOLD_SQL, (request.amount, at, request.user_id)).rowcount == 1:
        return request.amount
    balance = connection.execute(_BALANCE_SQL, (request.user_id, at)).fetchone()
    if balance is None or not balance[2]:
        return None
    remaining, reserved, _ = balance
    if remaining < request.least:
        return ledger.insufficient(remaining=remaining, needed=request.least, held=reserved)
    # Less remains than the whole amount, but enough for the least that will do.
    if connection.execute(_HOLD_SQL, (remaining, at, request.user_id)).rowcount != 1:
        return None
    return int(remaining)


@dataclass(frozen=True)
class Settlement:
    reservation_id: int
    organization_id: int
    usage: UsageInput


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


async def settle_many(session: AsyncSession, settlements: list[Settlement]) -> None:
    """Close many holds and record their usage in a handful of statements."""
    # Core on the connection, which does not flush pending ORM changes by itself.
    await session.flush()
    dialect = dialect_of(session)
    await ledger.lock_in_user_order(session, {s.usage.user_id for s in settlements})
    actual = sorted((s.reservation_id, s.usage.debit) for s in settlements)
    params = rows_bound(dialect, "settled", SETTLED, actual)
    closed = (await run_core(session, _settle_holds(dialect), params)).all()
    returned: dict[int, int] = defaultdict(int)
    for _, user_id, amount in closed:
        returned[user_id] += amount
    await ledger.return_holds(session, returned)
    # Usage is recorded even if the hold had already expired: the tokens were really used.
    by_org: dict[int, list[UsageInput]] = defaultdict(list)
    for settlement in settlements:
        by_org[settlement.organization_id].append(settlement.usage)
    for organization_id, events in by_org.items():
        await record_usage(session, organization_id=organization_id, events=events)
