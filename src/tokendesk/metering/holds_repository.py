"""All SQL of the gateway's holds and settlements (see :mod:`holds` for when it runs).

A hold must be exact under concurrency: one conditional UPDATE both checks and
reserves. SQLite holds run on a plain connection in microseconds
(:func:`hold_each`); PostgreSQL holds are one statement, one round trip
(:func:`hold_in_one_round_trip`); either leaves what it cannot decide to the
general path (:func:`hold_many`), which rolls periods over and refuses with the
exact message. Settlements close many holds and record their usage in a handful
of set-based statements (:func:`settle_many`).
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

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
from tokendesk.ledger.models import Reservation, ReservationStatus
from tokendesk.metering.service import UsageInput, record_usage

RESERVATIONS = cast(Table, Reservation.__table__)
BALANCES = ledger.BALANCES


@dataclass(frozen=True)
class HoldRequest:
    user_id: int
    organization_id: int
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


CALLS = ("org", "uid", "amount")


@cache
def _hold_in_one_statement() -> Any:
    """PostgreSQL: hold each user's total where the whole of it fits, and insert the
    reservations of those users' calls, in one statement."""
    now = bindparam("now", type_=UTCDateTime())
    calls = bound_rows("postgresql", "calls", *CALLS)
    wanted = (
        select(calls.c.uid, func.sum(calls.c.amount).label("amount"))
        .group_by(calls.c.uid)
        .cte("wanted")
    )
    # The rows are locked in user order first, as every other batch locks them: the
    # UPDATE alone would take them in whatever order its plan visits them.
    locked = (
        select(BALANCES.c.user_id)
        .where(BALANCES.c.user_id.in_(select(wanted.c.uid)))
        .order_by(BALANCES.c.user_id)
        .with_for_update()
        .cte("locked")
    )
    held = (
        update(BALANCES)
        .where(
            BALANCES.c.user_id == wanted.c.uid,
            BALANCES.c.user_id.in_(select(locked.c.user_id)),
            BALANCES.c.period_end > now,
            wanted.c.amount <= ledger.REMAINING,
        )
        .values(reserved=BALANCES.c.reserved + wanted.c.amount, updated_at=now)
        .returning(BALANCES.c.user_id)
        .cte("held")
    )
    source = select(
        calls.c.org,
        calls.c.uid,
        calls.c.amount,
        literal(ReservationStatus.HELD.value),
        now,
        bindparam("expires", type_=UTCDateTime()),
    ).join_from(calls, held, held.c.user_id == calls.c.uid)
    columns = ["organization_id", "user_id", "amount", "status", "created_at", "expires_at"]
    return (
        insert(RESERVATIONS)
        .from_select(columns, source)
        .returning(RESERVATIONS.c.id, RESERVATIONS.c.user_id, RESERVATIONS.c.amount)
    )


async def hold_in_one_round_trip(
    database: Database, requests: list[HoldRequest], *, ttl_seconds: int
) -> list[int | None]:
    """PostgreSQL: each call's hold, or None where its user's total did not fit (or the
    period has ended): those are left for :func:`hold_many`.

    One statement outside any transaction block, so the database is asked once
    (the UPDATE and the INSERT it feeds commit together, as one statement does).
    """
    now = utcnow()
    calls = sorted((r.organization_id, r.user_id, r.amount) for r in requests if r.amount > 0)
    params = {
        **rows_bound("postgresql", "calls", CALLS, calls),
        "now": now,
        "expires": now + timedelta(seconds=ttl_seconds),
    }
    async with database.write_engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        rows = (await connection.execute(_hold_in_one_statement(), params)).all()
    # A user's calls of the same amount are interchangeable: any of their holds will do.
    held: dict[tuple[int, int], list[int]] = defaultdict(list)
    for reservation_id, user_id, amount in rows:
        held[(user_id, amount)].append(reservation_id)
    results: list[int | None] = []
    for request in requests:
        ids = held.get((request.user_id, request.amount))
        results.append(ids.pop() if ids else None)
    return results


async def hold_many(
    session: AsyncSession, requests: list[HoldRequest], *, ttl_seconds: int
) -> list[int | AppError]:
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
    dialect = dialect_of(session)
    await ledger.lock_in_user_order(session, totals)
    params = rows_bound(dialect, "wanted", WANTED, sorted(totals.items()))
    held_users = set(
        (await run_core(session, _hold_totals(dialect), {**params, "now": now})).scalars()
    )
    results: list[int | AppError] = [0] * len(requests)
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
            results[i] = reservation_id
    rest = [i for i, r in enumerate(requests) if r.user_id not in held_users]
    if rest:
        exact = await reserve_each(session, [requests[i] for i in rest], ttl_seconds=ttl_seconds)
        for i, result in zip(rest, exact, strict=True):
            results[i] = result
    return results


async def reserve_each(
    session: AsyncSession, requests: list[HoldRequest], *, ttl_seconds: int
) -> list[int | AppError]:
    """The exact path, call by call: rolls an ended period over first, and refuses
    precisely the calls that cannot be covered (402 with the amounts).

    Users are taken in id order (each user's calls in batch order), as every batch
    that locks balances takes them: in arrival order, a batch could lock one user
    while a settlement held another and each wait for the other (PostgreSQL).
    """
    now = utcnow()
    results: list[int | AppError] = [0] * len(requests)
    for i in sorted(range(len(requests)), key=lambda i: requests[i].user_id):
        request = requests[i]
        try:
            async with session.begin_nested():
                reservation = await ledger.reserve(
                    session,
                    user_id=request.user_id,
                    amount=request.amount,
                    ttl_seconds=ttl_seconds,
                    now=now,
                )
            results[i] = reservation.id
        except AppError as exc:
            results[i] = exc
    return results


# The hold of ledger.reserve, spelled for SQLite's own driver (see hold_each): the same
# conditional UPDATE (remaining is ledger.REMAINING), then the reservation row.
_HOLD_SQL = (
    "UPDATE balances SET reserved = reserved + ?1, updated_at = ?2 "
    "WHERE user_id = ?3 AND period_end > ?2 "
    "AND ?1 <= allocation + granted + adjusted - used - reserved"
)
_RESERVATION_SQL = (
    "INSERT INTO reservations (organization_id, user_id, amount, status, created_at, expires_at)"
    f" VALUES (?, ?, ?, '{ReservationStatus.HELD.value}', ?, ?)"
)


def hold_each(
    connection: sqlite3.Connection, requests: list[HoldRequest], *, ttl_seconds: int
) -> list[int | None]:
    """SQLite: hold each request in turn, in batch order; None where it did not fit.

    Runs inside :meth:`Database.quick_write`, so each statement costs microseconds.
    A request that does not fit, or whose user's period has ended, is left for
    :func:`hold_many`, which rolls periods over and refuses with the exact message.
    """
    now = utcnow()
    at = sqlite_timestamp(now)
    expires = sqlite_timestamp(now + timedelta(seconds=ttl_seconds))
    results: list[int | None] = []
    for request in requests:
        held = request.amount > 0 and (
            connection.execute(_HOLD_SQL, (request.amount, at, request.user_id)).rowcount == 1
        )
        if not held:
            results.append(None)
            continue
        row = (request.organization_id, request.user_id, request.amount, at, expires)
        results.append(connection.execute(_RESERVATION_SQL, row).lastrowid)
    return results


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
