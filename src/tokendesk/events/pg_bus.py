"""Event bus over PostgreSQL LISTEN/NOTIFY, so every server process sees every event."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import asyncpg

from tokendesk.events.bus import Event, InProcessBus

log = logging.getLogger(__name__)

CHANNEL = "tokendesk_events"
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
    to subscribers kept and routed as the in-process bus keeps them."""

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self._dsn = dsn.replace("postgresql+asyncpg://", "postgresql://")
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=4)
        await self._listen()
        self._watchdog = asyncio.create_task(self._keep_listening())

    @property
    def listening(self) -> bool:
        # Down from the moment the connection drops, not only once the watchdog notices.
        return self._listener is not None and not self._listener.is_closed()

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self._dsn)
        await conn.add_listener(CHANNEL, self._on_notify)
        self._listener = conn
        self._connected.set()

    async def _keep_listening(self) -> None:
        # Reconnect the LISTEN connection if the server drops it; clients resync on reconnect.
        delay = 0.5
        while True:
            await asyncio.sleep(delay)
            conn = self._listener
            if conn is not None and not conn.is_closed():
                delay = 0.5
                continue
            self._connected.clear()
            try:
                await self._listen()
                log.info("event listener reconnected")
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("event listener reconnect failed: %s", exc)
                delay = min(delay * 2, 10)

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
        async with self._pool.acquire() as conn:
            await conn.execute(
                "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", CHANNEL, payloads
            )

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
