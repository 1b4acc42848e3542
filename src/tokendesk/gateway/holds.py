"""The gateway's budget primitives: holds gathered into group commits, and settling in
batches in the background.

Holding happens before the upstream call and must be exact under concurrency
(the SQL is in :mod:`holds_repository`). Settling happens after the response is
on its way, so the settler groups many settlements into one transaction instead
of paying a commit per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from functools import partial
from typing import cast

from sqlalchemy import Table, bindparam, update
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.models import ApiKey
from tokendesk.db import Database, Fallback, run_core
from tokendesk.errors import AppError
from tokendesk.ledger import service as ledger
from tokendesk.metering.holds_repository import (
    Hold,
    HoldRequest,
    Settlement,
    hold_each,
    hold_in_one_round_trip,
    hold_many,
    reserve_each,
    settle_many,
)

log = logging.getLogger(__name__)

API_KEYS = cast(Table, ApiKey.__table__)

GeneralHold = Callable[..., Awaitable[Sequence[Hold | AppError]]]

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
            results = await self._hold([request for request, _ in batch])
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue  # the caller went away; the hold expires on schedule
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def _hold(self, requests: list[HoldRequest]) -> list[Hold | Exception]:
        """One result per request, in order: the hold or why there is none.

        Never raises: holds already committed by the quick path stand (and reach
        their callers) even if the general path then fails for the others.
        """
        ttl = self.ttl_seconds
        quick: list[Hold | AppError | None] | None = None
        try:
            if self.database.is_sqlite:
                written = await self.database.quick_write(
                    lambda connection: hold_each(connection, requests, ttl_seconds=ttl)
                )
                quick = None if isinstance(written, Fallback) else written
            else:
                quick = await hold_in_one_round_trip(self.database, requests, ttl_seconds=ttl)
        except Exception:
            # Nothing was committed (one transaction, or one statement): all go the
            # general way, which waits for locks and reports each call's own error.
            log.warning("quick hold of %d calls failed", len(requests), exc_info=True)
        results: list[Hold | Exception | None] = list(quick or [None] * len(requests))
        rest = [i for i, result in enumerate(results) if result is None]
        if rest:
            # What the quick path tried (each user's fit) need not be tried again.
            general = hold_many if quick is None else reserve_each
            held = await self._hold_generally([requests[i] for i in rest], general)
            for i, result in zip(rest, held, strict=True):
                results[i] = result
        done = [result for result in results if result is not None]
        assert len(done) == len(requests)
        return done

    async def _hold_generally(
        self, requests: list[HoldRequest], general: GeneralHold
    ) -> list[Hold | Exception]:
        try:
            async with self.database.transaction() as session:
                return list(await general(session, requests, ttl_seconds=self.ttl_seconds))
        except Exception as exc:
            if len(requests) == 1:
                return [exc]
            # One call's failure must not reach the others: each again on its own, as
            # the settler does, so only the call that caused it gets the error.
            log.warning("hold of %d calls failed; holding one by one", len(requests))
            return [(await self._hold_generally([r], reserve_each))[0] for r in requests]


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
    """

    def __init__(
        self,
        database: Database,
        *,
        max_batch: int = 250,
        linger_seconds: float | None = None,
        keys_used: dict[int, datetime] | None = None,
    ) -> None:
        self.database = database
        if linger_seconds is None:
            linger_seconds = 0.01 if database.is_sqlite else 0.1
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
            else:
                # Quick transactions run without yielding: let the holds and requests
                # that arrived meanwhile in before the next batch takes the writer.
                await asyncio.sleep(0)

    async def _commit(self, batch: list[Settlement]) -> None:
        try:
            # On SQLite every statement in one turn of the loop: the writer is then
            # held for the SQL alone, not also for the requests served in between.
            await self.database.run(partial(self._settle, batch=batch))
        except Exception:
            if len(batch) == 1:
                log.exception("settling hold %s failed", batch[0].reservation_id)
                return
            # One bad settlement must not lose the others: retry them one by one.
            for settlement in batch:
                await self._commit([settlement])

    async def _settle(self, session: AsyncSession, batch: list[Settlement]) -> None:
        await settle_many(session, batch)
        await self._stamp_keys(session)

    async def _stamp_keys(self, session: AsyncSession) -> None:
        if not self.keys_used:
            return
        used = dict(self.keys_used)
        await run_core(
            session,
            update(API_KEYS)
            .where(API_KEYS.c.id == bindparam("kid"))
            .values(last_used_at=bindparam("at")),
            [{"kid": key_id, "at": at} for key_id, at in used.items()],
        )
        # Only now: a quick transaction that gives up is tried again the normal way.
        for key_id, at in used.items():
            if self.keys_used.get(key_id) == at:
                del self.keys_used[key_id]

    async def stop(self) -> None:
        await self.drain()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
