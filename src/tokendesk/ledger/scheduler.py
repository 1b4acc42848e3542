"""The in-server scheduler: resets ended periods, releases forgotten holds and queues
the daily digests of pending requests whose local hour it is.

Several server processes may run it at once; the conditional updates in the
ledger service make each reset and each expiry happen exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy import func, select

from tokendesk.db import Database, log_failure, utcnow
from tokendesk.ledger import service as ledger
from tokendesk.ledger.models import Balance
from tokendesk.notifications import digest

log = logging.getLogger(__name__)


class TickCounter(Protocol):
    def __call__(self, *, ok: bool, reset: int = 0, expired: int = 0) -> None: ...


@dataclass
class TickResult:
    reset: int
    expired: int
    digests: int = 0


async def run_once(database: Database, *, now: datetime | None = None) -> TickResult:
    now = now or utcnow()
    # One transaction each: each locks its balances in user order, and one after the
    # other in a single transaction they would not be in user order together.
    async with database.transaction() as session:
        reset = await ledger.rollover_due(session, now=now)
    async with database.transaction() as session:
        expired = await ledger.expire_holds(session, now=now)
    async with database.transaction() as session:
        digests = await digest.queue_due(session, now=now)
    if reset or expired or digests:
        log.info(
            "scheduler: %d balances reset, %d holds expired, %d digests queued",
            reset,
            expired,
            digests,
        )
    return TickResult(reset=reset, expired=expired, digests=digests)


async def _seconds_until_next_boundary(database: Database, interval: float) -> float:
    async with database.transaction(write=False) as session:
        nearest = await session.scalar(select(func.min(Balance.period_end)))
    if nearest is None:
        return interval
    # Wake at the boundary itself, not up to `interval` late.
    return max(0.05, min(interval, (nearest - utcnow()).total_seconds() + 0.05))


async def run_forever(
    database: Database, *, interval: float, on_tick: TickCounter | None = None
) -> None:
    """Tick until cancelled; ``on_tick`` hears of each tick (the runtime's metrics)."""
    while True:
        try:
            result = await run_once(database)
            delay = await _seconds_until_next_boundary(database, interval)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log_failure(log, error, "scheduler tick failed; retrying")
            delay = interval
            if on_tick is not None:
                on_tick(ok=False)
        else:
            if on_tick is not None:
                on_tick(ok=True, reset=result.reset, expired=result.expired)
        await asyncio.sleep(delay)
