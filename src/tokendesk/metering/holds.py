"""The gateway's budget primitives: a one-round-trip hold, and settling in batches.

Holding happens before the upstream call and must be exact under concurrency:
one conditional UPDATE both checks and reserves. Settling happens after the
response is on its way, so the settler groups many settlements into one
transaction instead of paying a commit per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.models import ApiKey
from tokendesk.db import (
    Database,
    UTCDateTime,
    bound_rows,
    in_list,
    listed,
    rows_bound,
    sqlite_timestamp,
    utcnow,
)
from tokendesk.errors import AppError
from tokendesk.ledger import service as ledger
from tokendesk.ledger.models import Reservation, ReservationStatus
from tokendesk.metering.repository import dialect_of, run
from tokendesk.metering.service import UsageInput, record_usage

log = logging.getLogger(__name__)

RESERVATIONS = cast(Table, Reservation.__table__)
BALANCES = ledger.BALANCES
API_KEYS = cast(Table, ApiKey.__table__)


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
    held = (
        update(BALANCES)
        .where(
            BALANCES.c.user_id == wanted.c.uid,
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
    params = rows_bound(dialect, "wanted", WANTED, sorted(totals.items()))
    held_users = set((await run(session, _hold_totals(dialect), {**params, "now": now})).scalars())
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
    for i, request in enumerate(requests):
        if request.user_id in held_users:
            continue
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


class HoldBatcher:
    """Groups concurrent hold requests into one transaction (group commit).

    Under load, calls arriving while a batch commits wait for the next batch,
    so the database sees one short transaction per batch instead of one per call.
    """

    def __init__(self, database: Database, *, ttl_seconds: int, max_batch: int = 256) -> None:
        self.database = database
        self.ttl_seconds = ttl_seconds
        self.max_batch = max_batch
        self._waiting: list[tuple[HoldRequest, asyncio.Future[int]]] = []
        self._task: asyncio.Task[None] | None = None

    async def hold(self, *, user_id: int, organization_id: int, amount: int) -> int:
        """The hold's id, or raises InsufficientTokens (402) like ledger.reserve."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append((HoldRequest(user_id, organization_id, amount), future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        while self._waiting:
            batch = self._waiting[: self.max_batch]
            del self._waiting[: self.max_batch]
            results = await self._hold([request for request, _ in batch])
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue  # the caller went away; the hold expires on schedule
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def _hold(self, requests: list[HoldRequest]) -> list[int | Exception]:
        """One result per request, in order: the hold's id or why there is none.

        Never raises: holds already committed by the quick path stand (and reach
        their callers) even if the general path then fails for the others.
        """
        ttl = self.ttl_seconds
        quick: list[int | None] | None = None
        try:
            if self.database.is_sqlite:
                quick = await self.database.quick_write(
                    lambda connection: hold_each(connection, requests, ttl_seconds=ttl)
                )
            else:
                quick = await hold_in_one_round_trip(self.database, requests, ttl_seconds=ttl)
        except Exception:
            # Nothing was committed (one transaction, or one statement): all go the
            # general way, which waits for locks and reports each call's own error.
            log.warning("quick hold of %d calls failed", len(requests), exc_info=True)
        results: list[int | Exception | None] = list(quick or [None] * len(requests))
        rest = [i for i, result in enumerate(results) if result is None]
        if rest:
            held: list[int | AppError] | list[Exception]
            try:
                async with self.database.transaction() as session:
                    held = await hold_many(session, [requests[i] for i in rest], ttl_seconds=ttl)
            except Exception as exc:
                held = [exc] * len(rest)
            for i, result in zip(rest, held, strict=True):
                results[i] = result
        done = [result for result in results if result is not None]
        assert len(done) == len(requests)
        return done


async def release(database: Database, *, reservation_id: int) -> None:
    async with database.transaction() as session:
        await ledger.release(session, reservation_id=reservation_id)


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


@cache
def _lock_balances_in_order(dialect: str) -> Any:
    b = BALANCES
    return (
        select(b.c.user_id)
        .where(in_list(dialect, b.c.user_id))
        .order_by(b.c.user_id)
        .with_for_update()
    )


async def settle_many(session: AsyncSession, settlements: list[Settlement]) -> None:
    """Close many holds and record their usage in a handful of statements."""
    # Core on the connection, which does not flush pending ORM changes by itself.
    await session.flush()
    dialect = dialect_of(session)
    if dialect == "postgresql":
        # Lock the balances in user order first, as every batch does: the set-based
        # updates below would otherwise take their rows in whatever order the plan
        # visits them, and two processes settling could deadlock.
        users = listed(dialect, {s.usage.user_id for s in settlements})
        await run(session, _lock_balances_in_order(dialect), {"ids": users})
    actual = sorted((s.reservation_id, s.usage.debit) for s in settlements)
    params = rows_bound(dialect, "settled", SETTLED, actual)
    closed = (await run(session, _settle_holds(dialect), params)).all()
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


class Settler:
    """Settles holds in the background, many per transaction (group commit).

    A settlement waits up to ``linger_seconds`` after it was submitted for others
    to join it: the transaction costs about the same for one settlement as for
    fifty, so under load this is most of the saving, and the member has their
    reply already. The same transaction also stamps "last used" on the API keys
    that made the calls.

    On SQLite a new call's hold waits while a settlement commits, so the linger
    also sets how many calls meet one: at 50 ms about one call in fifty waited
    10-25 ms (a settlement of that many), at 100 ms about one in a hundred.
    A member's balance shows a call's usage that much later, still far below
    anything a person notices.
    """

    def __init__(
        self,
        database: Database,
        *,
        max_batch: int = 250,
        linger_seconds: float = 0.1,
        keys_used: dict[int, datetime] | None = None,
    ) -> None:
        self.database = database
        self.linger_seconds = linger_seconds
        self.keys_used = keys_used if keys_used is not None else {}
        self.max_batch = max_batch
        self._waiting: list[Settlement] = []
        self._first_at = 0.0  # when the oldest waiting settlement was submitted
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    def submit(self, settlement: Settlement) -> None:
        """Never blocks and never raises: safe from a cancelled stream's cleanup."""
        if not self._waiting:
            self._first_at = time.monotonic()
            self._wake.set()
        self._waiting.append(settlement)
        self._idle.clear()
        self.start()

    async def drain(self) -> None:
        """Wait until every submitted settlement is committed."""
        await self._idle.wait()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._waiting:
                continue
            # Settlements that queued during the previous commit have waited already.
            linger = self._first_at + self.linger_seconds - time.monotonic()
            if linger > 0 and len(self._waiting) < self.max_batch:
                await asyncio.sleep(linger)
            batch = self._waiting[: self.max_batch]
            del self._waiting[: self.max_batch]
            if self._waiting:
                self._wake.set()  # a full batch left some behind: they go next, at once
            await self._commit(batch)
            if not self._waiting:
                self._idle.set()

    async def _commit(self, batch: list[Settlement]) -> None:
        try:
            async with self.database.transaction() as session:
                await settle_many(session, batch)
                await self._stamp_keys(session)
        except Exception:
            if len(batch) == 1:
                log.exception("settling hold %s failed", batch[0].reservation_id)
                return
            # One bad settlement must not lose the others: retry them one by one.
            for settlement in batch:
                await self._commit([settlement])

    async def _stamp_keys(self, session: AsyncSession) -> None:
        if not self.keys_used:
            return
        used = dict(self.keys_used)
        self.keys_used.clear()
        await session.execute(
            update(API_KEYS)
            .where(API_KEYS.c.id == bindparam("kid"))
            .values(last_used_at=bindparam("at")),
            [{"kid": key_id, "at": at} for key_id, at in used.items()],
        )

    async def stop(self) -> None:
        await self.drain()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
