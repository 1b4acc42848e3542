"""The gateway's budget primitives: holds gathered into group commits, and settling in
batches in the background.

Holding happens before the upstream call and must be exact under concurrency:
the ledger's hold operation (:mod:`tokendesk.ledger.holds`) does it, many calls at
once. Settling happens after the response is on its way, so the settler groups
many settlements into one transaction instead of paying a commit per call
(:func:`metering.settlements.settle_many` writes them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from functools import partial
from typing import cast

from sqlalchemy import Table, bindparam, update
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.models import ApiKey, Integration
from tokendesk.db import Database, is_outage, run_core
from tokendesk.ledger import service as ledger
from tokendesk.ledger.holds import Hold, HoldRequest, holds_for
from tokendesk.metering.settlements import Settlement, settle_many
from tokendesk.observability.metrics import Metrics

log = logging.getLogger(__name__)

# While the database is out of reach, settlements wait in memory and are tried again
# after a pause that doubles from the first figure up to the second.
RETRY_FIRST_SECONDS = 0.5
RETRY_MOST_SECONDS = 5.0

API_KEYS = cast(Table, ApiKey.__table__)
INTEGRATIONS = cast(Table, Integration.__table__)

__all__ = ["Hold", "HoldBatcher", "HoldRequest", "Settlement", "Settler", "release"]


class HoldBatcher:
    """Groups concurrent hold requests into one transaction (group commit).

    Under load, calls arriving while a batch commits wait for the next batch,
    so the database sees one short transaction per batch instead of one per call.
    """

    def __init__(self, database: Database, *, ttl_seconds: int, max_batch: int = 256) -> None:
        self.database = database
        self.ttl_seconds = ttl_seconds
        self.max_batch = max_batch
        self.holds = holds_for(database, ttl_seconds=ttl_seconds)
        self._waiting: list[tuple[HoldRequest, asyncio.Future[Hold]]] = []
        self._task: asyncio.Task[None] | None = None

    async def hold(
        self, *, user_id: int, organization_id: int, amount: int, at_least: int | None = None
    ) -> Hold:
        """Hold ``amount`` tokens, or with ``at_least`` what remains up to ``amount`` if
        that is at least ``at_least``; otherwise raises InsufficientTokens (402) like
        ledger.reserve. A nonsense amount is refused (422) before it joins a batch."""
        ledger.check_hold(amount, at_least)
        future: asyncio.Future[Hold] = asyncio.get_running_loop().create_future()
        request = HoldRequest(user_id, organization_id, amount, at_least)
        self._waiting.append((request, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        while self._waiting:
            batch = self._waiting[: self.max_batch]
            del self._waiting[: self.max_batch]
            results = await self.holds.hold([request for request, _ in batch])
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue  # the caller went away; the hold expires on schedule
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)


async def release(database: Database, *, reservation_id: int) -> None:
    async with database.transaction() as session:
        await ledger.release(session, reservation_id=reservation_id)


class Settler:
    """Settles holds in the background, many per transaction (group commit).

    A settlement waits up to ``linger_seconds`` after it was submitted for others
    to join it: each transaction has a fixed cost that all its settlements share,
    so under load this is most of the saving, and the member has their reply
    already. The same transaction also stamps "last used" on the API keys
    that made the calls.

    On SQLite a settlement runs on the loop itself (Database.quick_transaction),
    so every call in flight waits while it writes: a short linger (10 ms) makes
    those waits short and keeps the calls' p99 low. On PostgreSQL a settlement
    is a transaction of several round trips that holds never wait for as a
    whole, so it lingers longer (100 ms) and shares its cost among more calls.
    Either way a member's balance shows a call's usage a moment later, far
    below anything a person notices. The measurements behind both figures are
    in benchmarks/RESULTS.md (the gateway section).

    While the database is out of reach nothing is given up: the settlements wait
    and are tried again until it answers (see ``_keep_for_later``).
    """

    def __init__(
        self,
        database: Database,
        *,
        max_batch: int = 250,
        linger_seconds: float | None = None,
        keys_used: dict[int, datetime] | None = None,
        integrations_used: dict[int, datetime] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.database = database
        self.metrics = metrics if metrics is not None else Metrics()
        if linger_seconds is None:
            linger_seconds = 0.01 if database.is_sqlite else 0.1
        self.linger_seconds = linger_seconds
        self.keys_used = keys_used if keys_used is not None else {}
        self.integrations_used = integrations_used if integrations_used is not None else {}
        self.max_batch = max_batch
        self._waiting: list[Settlement] = []
        self._first_at = 0.0  # when the oldest waiting settlement was submitted
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._retry_seconds = RETRY_FIRST_SECONDS

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

    @property
    def waiting(self) -> int:
        """Settlements queued for the next transaction."""
        return len(self._waiting)

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
            # Behind a full batch, the next one's lag counts from this one's oldest: an
            # upper bound, as the time they were queued is not kept.
            oldest_at = self._first_at
            if self._waiting:
                self._wake.set()  # a full batch left some behind: they go next, at once
            try:
                await self._commit(batch)
            except Exception as error:
                if not is_outage(error):
                    raise
                await self._keep_for_later(batch, oldest_at, error)
                continue
            self._retry_seconds = RETRY_FIRST_SECONDS
            self.metrics.settled_batch(len(batch), oldest_at=oldest_at)
            if not self._waiting:
                self._idle.set()
            else:
                # Quick transactions run without yielding: let the holds and requests
                # that arrived meanwhile in before the next batch takes the writer.
                await asyncio.sleep(0)

    async def _keep_for_later(
        self, batch: list[Settlement], oldest_at: float, error: Exception
    ) -> None:
        """The database is out of reach: the batch goes back to the front of the queue,
        and is tried again after a pause that grows while the outage lasts. Settling
        twice is harmless (a closed hold is left as it is, a usage event id replays),
        so a batch that committed just as its connection dropped costs nothing again."""
        self._waiting[:0] = batch
        self._first_at = oldest_at
        log.warning(
            "database unavailable: %d settlements kept, retrying in %.1f s (%s)",
            len(self._waiting),
            self._retry_seconds,
            type(error).__name__,
        )
        await asyncio.sleep(self._retry_seconds)
        self._retry_seconds = min(self._retry_seconds * 2, RETRY_MOST_SECONDS)
        self._wake.set()

    async def _commit(self, batch: list[Settlement]) -> None:
        try:
            # On SQLite every statement in one turn of the loop: the writer is then
            # held for the SQL alone, not also for the requests served in between.
            await self.database.run(partial(self._settle, batch=batch))
        except Exception as error:
            if is_outage(error):
                raise  # kept whole for later by _run: no settlement is given up
            if len(batch) == 1:
                log.exception("settling hold %s failed", batch[0].reservation_id)
                self.metrics.settlement_failures.inc()
                return
            # One bad settlement must not lose the others: retry them one by one.
            for settlement in batch:
                await self._commit([settlement])

    async def _settle(self, session: AsyncSession, batch: list[Settlement]) -> None:
        await settle_many(session, batch)
        await self._stamp_keys(session)

    async def _stamp_keys(self, session: AsyncSession) -> None:
        for table, used in (
            (API_KEYS, self.keys_used),
            (INTEGRATIONS, self.integrations_used),
        ):
            if not used:
                continue
            stamps = dict(used)
            await run_core(
                session,
                update(table)
                .where(table.c.id == bindparam("kid"))
                .values(last_used_at=bindparam("at")),
                [{"kid": key_id, "at": at} for key_id, at in stamps.items()],
            )
            # Only now: a quick transaction that gives up is tried again the normal way.
            for key_id, at in stamps.items():
                if used.get(key_id) == at:
                    del used[key_id]

    async def stop(self) -> None:
        await self.drain()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
