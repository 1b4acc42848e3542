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
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import cast

from sqlalchemy import Table, bindparam, insert, update
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.db import Database, utcnow
from tokendesk.ledger import service as ledger
from tokendesk.ledger.models import Balance, Reservation, ReservationStatus
from tokendesk.metering.service import UsageInput, record_usage

log = logging.getLogger(__name__)

RESERVATIONS = cast(Table, Reservation.__table__)
BALANCES = cast(Table, Balance.__table__)


async def hold(
    database: Database, *, user_id: int, organization_id: int, amount: int, ttl_seconds: int
) -> int:
    """Reserve ``amount`` tokens and return the hold's id, or raise InsufficientTokens (402)."""
    now = utcnow()
    async with database.transaction() as session:
        held = await session.execute(
            update(Balance)
            .where(
                Balance.user_id == user_id,
                Balance.period_end > now,
                amount <= ledger.REMAINING,
            )
            .values(reserved=Balance.reserved + amount, updated_at=now)
            .returning(Balance.user_id)
            .execution_options(synchronize_session=False)
        )
        if held.first() is None:
            # Ended period or not enough tokens: the full path rolls over and explains.
            reservation = await ledger.reserve(
                session, user_id=user_id, amount=amount, ttl_seconds=ttl_seconds, now=now
            )
            return reservation.id
        reservation_id = await session.scalar(
            insert(Reservation)
            .values(
                organization_id=organization_id,
                user_id=user_id,
                amount=amount,
                status=ReservationStatus.HELD.value,
                created_at=now,
                expires_at=now + timedelta(seconds=ttl_seconds),
            )
            .returning(Reservation.id)
        )
        assert reservation_id is not None
        return reservation_id


async def release(database: Database, *, reservation_id: int) -> None:
    async with database.transaction() as session:
        await ledger.release(session, reservation_id=reservation_id)


@dataclass(frozen=True)
class Settlement:
    reservation_id: int
    organization_id: int
    usage: UsageInput


async def settle_many(session: AsyncSession, settlements: list[Settlement]) -> None:
    """Close many holds and record their usage in a handful of statements."""
    ids = [s.reservation_id for s in settlements]
    closed = (
        await session.execute(
            update(Reservation)
            .where(Reservation.id.in_(ids), Reservation.status == ReservationStatus.HELD)
            .values(status=ReservationStatus.SETTLED.value)
            .returning(Reservation.id, Reservation.user_id, Reservation.amount)
            .execution_options(synchronize_session=False)
        )
    ).all()
    actual = {s.reservation_id: s.usage for s in settlements}
    if closed:
        await session.execute(
            # Core tables: an executemany over the ORM entity would mean "update by primary key".
            update(RESERVATIONS)
            .where(RESERVATIONS.c.id == bindparam("rid"))
            .values(settled_amount=bindparam("actual")),
            [
                {
                    "rid": rid,
                    "actual": actual[rid].total_tokens
                    if actual[rid].total_tokens is not None
                    else actual[rid].prompt_tokens + actual[rid].completion_tokens,
                }
                for rid, _, _ in closed
            ],
        )
        returned: dict[int, int] = defaultdict(int)
        for _, user_id, amount in closed:
            returned[user_id] += amount
        await session.execute(
            update(BALANCES)
            .where(BALANCES.c.user_id == bindparam("uid"))
            .values(reserved=BALANCES.c.reserved - bindparam("amount")),
            [{"uid": uid, "amount": amount} for uid, amount in returned.items()],
        )
    # Usage is recorded even if the hold had already expired: the tokens were really used.
    by_org: dict[int, list[UsageInput]] = defaultdict(list)
    for settlement in settlements:
        by_org[settlement.organization_id].append(settlement.usage)
    for organization_id, events in by_org.items():
        await record_usage(session, organization_id=organization_id, events=events)


class Settler:
    """Settles holds in the background, many per transaction (group commit)."""

    def __init__(self, database: Database, *, max_batch: int = 500) -> None:
        self.database = database
        self.max_batch = max_batch
        self._queue: asyncio.Queue[Settlement] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    def submit(self, settlement: Settlement) -> None:
        """Never blocks and never raises: safe from a cancelled stream's cleanup."""
        self._pending += 1
        self._idle.clear()
        self._queue.put_nowait(settlement)
        self.start()

    async def drain(self) -> None:
        """Wait until every submitted settlement is committed."""
        await self._idle.wait()

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._commit(batch)
            self._pending -= len(batch)
            if self._pending == 0:
                self._idle.set()

    async def _commit(self, batch: list[Settlement]) -> None:
        try:
            async with self.database.transaction() as session:
                await settle_many(session, batch)
        except Exception:
            if len(batch) == 1:
                log.exception("settling hold %s failed", batch[0].reservation_id)
                return
            # One bad settlement must not lose the others: retry them one by one.
            for settlement in batch:
                await self._commit([settlement])

    async def stop(self) -> None:
        await self.drain()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
