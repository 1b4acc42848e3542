"""The notification worker: runs inside every server (started and stopped with the
runtime, like the scheduler) and delivers the outbox.

One tick: claim a batch of due notifications under a lease (``repository.claim``),
read what they need, deliver them with no transaction open (emails over a few SMTP
connections, webhooks concurrently), then record each outcome and attempt in one
transaction. A failure is retried with exponential backoff until
``TOKENDESK_NOTIFY_GIVE_UP_HOURS`` after the notification was queued, then marked
failed. A worker killed between delivering and recording leaves its lease to run
out; the next claim delivers again with the same idempotency key, so the receiver
can drop the repeat.

The worker wakes when a transaction that queued notifications commits (a system
event on the bus, which crosses instances on PostgreSQL), else every
``TOKENDESK_NOTIFY_POLL_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.mime.multipart import MIMEMultipart

import aiohttp

from tokendesk.config import Settings
from tokendesk.db import Database, log_failure, utcnow
from tokendesk.events.bus import Inbox
from tokendesk.notifications import email, webhooks
from tokendesk.notifications import repository as repo
from tokendesk.notifications.messages import Delivery, compose, idempotency_key
from tokendesk.notifications.models import Channel
from tokendesk.notifications.wakeup import QUEUED

log = logging.getLogger(__name__)
# Posts in flight at once from one worker.
WEBHOOK_CONCURRENCY = 32
NO_SMTP = "email is off on this server: TOKENDESK_SMTP_HOST is not set"
# How long a server stopping waits for the worker's tick in progress.
TICK_GRACE_SECONDS = 10.0
# Delivered and given-up notifications are kept this long for the delivery view.
KEEP_DAYS = 30
# How often a worker forgets what is past keeping (and the alerts and digests recorded
# that can no longer stop a repeat).
HOUSEKEEPING = timedelta(hours=1)


@dataclass
class TickResult:
    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    skipped: int = 0


class NotificationWorker:
    def __init__(self, settings: Settings, database: Database) -> None:
        self.settings = settings
        self.database = database
        self._client: aiohttp.ClientSession | None = None
        self._last_housekeeping: datetime | None = None
        self._ticking: asyncio.Future[TickResult] | None = None

    @property
    def client(self) -> aiohttp.ClientSession:
        # Created lazily: the client belongs to the running event loop.
        if self._client is None:
            self._client = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.webhook_timeout_seconds),
                connector=aiohttp.TCPConnector(limit=WEBHOOK_CONCURRENCY * 2),
                # A receiver's cookies mean nothing here.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._client

    async def _tick(self) -> TickResult:
        await self.housekeeping()
        return await self.run_once()

    async def close(self) -> None:
        """After :meth:`run_forever` was cancelled: the tick it was in finishes first
        (within ``TICK_GRACE_SECONDS``, then it is cancelled after all)."""
        ticking, self._ticking = self._ticking, None
        if ticking is not None and not ticking.done():
            await asyncio.wait({ticking}, timeout=TICK_GRACE_SECONDS)
            if not ticking.done():
                ticking.cancel()
            with contextlib.suppress(BaseException):
                await ticking
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def run_once(self, *, now: datetime | None = None) -> TickResult:
        """Claim, deliver and record one batch; ``now`` (tests) stands for the clock."""
        clock = now or utcnow()
        lease = clock + timedelta(seconds=self.settings.notify_lease_seconds)
        async with self.database.transaction() as session:
            ids = await repo.claim(
                session, now=clock, lease_until=lease, limit=self.settings.notify_batch_size
            )
        result = TickResult(claimed=len(ids))
        if not ids:
            return result
        async with self.database.transaction(write=False) as session:
            batch = await repo.deliveries(session, ids)
        outcome = await self.deliver(batch, now=clock)
        finished = now or utcnow()
        give_up = timedelta(hours=self.settings.notify_give_up_hours)
        sent: list[int] = []
        retries: list[tuple[int, datetime, str]] = []
        failed: list[tuple[int, str]] = []
        skipped: list[tuple[int, str]] = []
        for delivery in batch:
            error = outcome.get(delivery.id)
            if error is None:
                sent.append(delivery.id)
            elif isinstance(error, Skip):
                skipped.append((delivery.id, error.reason))
            elif finished - delivery.created_at >= give_up:
                failed.append((delivery.id, error))
            else:
                wait = repo.backoff(self.settings.notify_retry_seconds, delivery.attempts)
                retries.append((delivery.id, finished + wait, error))
        async with self.database.transaction() as session:
            await repo.record(
                session, now=finished, sent=sent, retries=retries, failed=failed, skipped=skipped
            )
        result.sent, result.retried = len(sent), len(retries)
        result.failed, result.skipped = len(failed), len(skipped)
        self._count(batch, sent=sent, retries=retries, failed=failed, skipped=skipped)
        if retries or failed:
            log.warning(
                "notifications: %d to retry, %d given up (last error: %s)",
                len(retries),
                len(failed),
                (retries or failed)[-1][-1],
            )
        return result

    def _count(
        self,
        batch: list[Delivery],
        *,
        sent: list[int],
        retries: list[tuple[int, datetime, str]],
        failed: list[tuple[int, str]],
        skipped: list[tuple[int, str]],
    ) -> None:
        """Count each outcome by channel in the server's metrics (the CLI has none)."""
        metrics = self.database.metrics
        if metrics is None:
            return
        channel = {delivery.id: delivery.channel for delivery in batch}
        outcomes = [(i, "sent") for i in sent] + [(r[0], "retry") for r in retries]
        outcomes += [(f[0], "failed") for f in failed] + [(k[0], "skipped") for k in skipped]
        for notification_id, outcome in outcomes:
            metrics.delivered(channel[notification_id], outcome)

    async def deliver(
        self, batch: list[Delivery], *, now: datetime
    ) -> dict[int, str | Skip | None]:
        """Send every delivery of ``batch``; each one's outcome: None (delivered), an
        error to retry on, or a :class:`Skip` (nothing will ever deliver it)."""
        outcome: dict[int, str | Skip | None] = {}
        mails: list[tuple[int, MIMEMultipart]] = []
        posts: list[tuple[int, str, bytes, dict[str, str]]] = []
        timestamp = int(utcnow().timestamp())
        for delivery in batch:
            message = compose(delivery, self.settings, now=now)
            key = idempotency_key(self.settings, delivery.id)
            if delivery.channel == Channel.EMAIL:
                if delivery.to_user_id is None or delivery.to_email is None:
                    outcome[delivery.id] = Skip("the recipient is deactivated")
                elif self.settings.smtp_host is None:
                    outcome[delivery.id] = Skip(NO_SMTP)
                else:
                    mail = email.build(
                        self.settings,
                        notification_id=delivery.id,
                        to_email=delivery.to_email,
                        to_name=delivery.to_name or delivery.to_email,
                        message=message,
                    )
                    mails.append((delivery.id, mail))
            elif delivery.webhook_url is None or delivery.webhook_secret is None:
                outcome[delivery.id] = Skip("the webhook was removed")
            else:
                body = webhooks.body_of(
                    message,
                    format=delivery.webhook_format or "json",
                    key=key,
                    organization=delivery.organization_name,
                    created_at=delivery.created_at.isoformat(),
                )
                headers = webhooks.headers_for(
                    secret=delivery.webhook_secret,
                    key=key,
                    event=message.event,
                    body=body,
                    timestamp=timestamp,
                )
                posts.append((delivery.id, delivery.webhook_url, body, headers))
        limit = asyncio.Semaphore(WEBHOOK_CONCURRENCY)

        async def post(
            notification_id: int, url: str, body: bytes, headers: dict[str, str]
        ) -> None:
            async with limit:
                outcome[notification_id] = await webhooks.post(self.client, url, body, headers)

        mailed, _ = await asyncio.gather(
            email.send_all(self.settings, mails), asyncio.gather(*(post(*p) for p in posts))
        )
        outcome.update(mailed)
        return outcome

    async def drain(self, *, now: datetime | None = None, max_ticks: int = 1000) -> TickResult:
        """Tick until nothing is due (tests, the CLI); bounded by ``max_ticks``."""
        total = TickResult()
        for _ in range(max_ticks):
            tick = await self.run_once(now=now)
            if not tick.claimed:
                break
            total.claimed += tick.claimed
            total.sent += tick.sent
            total.retried += tick.retried
            total.failed += tick.failed
            total.skipped += tick.skipped
        return total

    async def housekeeping(self, *, now: datetime | None = None) -> None:
        clock = now or utcnow()
        if self._last_housekeeping and clock - self._last_housekeeping < HOUSEKEEPING:
            return
        self._last_housekeeping = clock
        async with self.database.transaction() as session:
            pruned = await repo.prune(session, before=clock - timedelta(days=KEEP_DAYS))
        if pruned:
            log.info("notifications: %d past keeping forgotten", pruned)

    async def _delay(self) -> float:
        async with self.database.transaction(write=False) as session:
            due = await repo.next_due(session)
        poll = self.settings.notify_poll_seconds
        if due is None:
            return poll
        return max(0.05, min(poll, (due - utcnow()).total_seconds()))

    async def run_forever(self) -> None:
        bus = self.database.bus
        async with contextlib.AsyncExitStack() as stack:
            queue: Inbox | None = None
            if bus is not None:
                queue = await stack.enter_async_context(bus.subscribe(system=True))
            while True:
                try:
                    # Shielded: the server stopping cancels the loop, never a tick in the
                    # middle of its transactions (close() waits for it). A SQLite write
                    # cancelled mid-statement can leave its connection holding the lock.
                    self._ticking = asyncio.ensure_future(self._tick())
                    tick = await asyncio.shield(self._ticking)
                    if tick.claimed >= self.settings.notify_batch_size:
                        continue
                    delay = await self._delay()
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    log_failure(log, error, "notification worker tick failed; retrying")
                    delay = self.settings.notify_poll_seconds
                await _woken(queue, delay)


async def _woken(queue: Inbox | None, delay: float) -> None:
    """Wait ``delay`` seconds, or less when notifications are queued meanwhile.

    ``asyncio.wait`` rather than ``wait_for``: cancelling this (the server stopping)
    must return at once, never wait on the queue's getter being cancelled in turn.
    """
    if queue is None:
        await asyncio.sleep(delay)
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + delay
    while (left := deadline - loop.time()) > 0:
        getter = asyncio.ensure_future(queue.get())
        try:
            await asyncio.wait({getter}, timeout=left)
        finally:
            if not getter.done():
                getter.cancel()
        if not getter.done() or getter.cancelled():
            return
        if getter.result().type == QUEUED:
            # Let the rest of a burst of commits land before claiming.
            while not queue.empty():
                queue.get_nowait()
            return


@dataclass(frozen=True)
class Skip:
    reason: str
