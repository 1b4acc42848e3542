"""Event bus over PostgreSQL LISTEN/NOTIFY, so every server process sees every event."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import asyncpg

from tokendesk.db import is_outage
from tokendesk.events.bus import Event, InProcessBus

log = logging.getLogger(__name__)

CHANNEL = "tokendesk_events"
# How often the watchdog looks at the LISTEN connection, and the longest it waits
# between attempts to connect again while the database is down.
LISTEN_CHECK_SECONDS = 0.5
LISTEN_RETRY_MOST_SECONDS = 2.0
CONNECT_SECONDS = 5.0
# NOTIFY payloads are capped at 8,000 bytes; leave room for the envelope.
MAX_PAYLOAD = 7_500


def _encode(event: Event) -> dict[str, Any]:
    return {
        "t": event.type,
        "d": event.data,
        "o": event.organization_id,
        "u": event.user_id,
        "m": event.team_id,
        "a": event.audience,
    }


def _decode(item: dict[str, Any]) -> Event:
    return Event(
        type=item["t"],
        data=item["d"],
        organization_id=item["o"],
        user_id=item["u"],
        team_id=item["m"],
        audience=item["a"],
    )


def pack(events: list[Event]) -> list[str]:
    """Group events into as few NOTIFY payloads as fit under the size cap."""
    payloads: list[str] = []
    batch: list[str] = []
    size = 2
    for event in events:
        encoded = json.dumps(_encode(event), separators=(",", ":"))
        if len(encoded) + 2 > MAX_PAYLOAD:
            log.warning("event %s too large for NOTIFY; dropped", event.type)
            continue
        if batch and size + len(encoded) + 1 > MAX_PAYLOAD:
            payloads.append("[" + ",".join(batch) + "]")
            batch, size = [], 2
        batch.append(encoded)
        size += len(encoded) + 1
    if batch:
        payloads.append("[" + ",".join(batch) + "]")
    return payloads


class PostgresBus(InProcessBus):
    """Publishes with NOTIFY; one LISTEN connection per process fans events out locally,
    to subscribers kept and routed as the in-process bus keeps them.

    When the database drops the LISTEN connection (a restart), a watchdog connects
    again, every :data:`LISTEN_RETRY_MOST_SECONDS` at most while it is down, and once
    it listens tells every subscriber to resync (:meth:`InProcessBus.resync`): what was
    published meanwhile was never heard here, so open streams send a fresh snapshot.
    """

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self._dsn = dsn.replace("postgresql+asyncpg://", "postgresql://")
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def start(self) -> None:
        # One connection kept open (and opened again by the pool once a restarted
        # database answers), so a NOTIFY never waits for a connection to be made.
        self._pool = await asyncpg.create_pool(
            self._dsn, min_size=1, max_size=4, timeout=CONNECT_SECONDS
        )
        await self._listen()
        self._watchdog = asyncio.create_task(self._keep_listening())

    @property
    def listening(self) -> bool:
        # Down from the moment the connection drops, not only once the watchdog notices.
        return self._listener is not None and not self._listener.is_closed()

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self._dsn, timeout=CONNECT_SECONDS)
        try:
            await conn.add_listener(CHANNEL, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        self._listener = conn
        self._connected.set()

    async def _keep_listening(self) -> None:
        delay = LISTEN_CHECK_SECONDS
        while True:
            await asyncio.sleep(delay)
            conn = self._listener
            if conn is not None and not conn.is_closed():
                continue
            self._connected.clear()
            try:
                await self._listen()
            except Exception as exc:
                log.warning("event listener reconnect failed: %s: %s", type(exc).__name__, exc)
                delay = min(delay * 2, LISTEN_RETRY_MOST_SECONDS)
                continue
            delay = LISTEN_CHECK_SECONDS
            log.info("event listener reconnected; open streams resync")
            self.resync()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            items = json.loads(payload)
        except ValueError:
            log.warning("ignoring malformed event payload")
            return
        for item in items:
            self.deliver(_decode(item))

    async def publish(self, events: list[Event]) -> None:
        if not events:
            return
        assert self._pool is not None, "PostgresBus.start() was not awaited"
        payloads = pack(events)
        try:
            async with self._pool.acquire(timeout=CONNECT_SECONDS) as conn:
                await conn.execute(
                    "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", CHANNEL, payloads
                )
        except Exception as exc:
            # What was published is committed already: failing its request now would
            # have the client retry a change that was made. This process's subscribers
            # hear of it here; when the database went (a restart cuts a connection
            # mid-NOTIFY, or as the pool resets it, in several ways), every other
            # instance lost it too and resyncs once it listens again.
            log.warning(
                "NOTIFY of %d events failed (%s: %s); delivered here",
                len(events),
                type(exc).__name__,
                exc,
                exc_info=not is_outage(exc),
            )
            for event in events:
                self.deliver(event)

    async def stop(self) -> None:
        # Once stopped, stopping again does nothing.
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        if self._listener is not None and not self._listener.is_closed():
            await self._listener.close()
        self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        await super().stop()
