"""The real-time event bus interface and its in-process implementation.

Services call :func:`emit` inside a transaction; the event reaches the bus only
after that transaction commits, so nobody is told about data that was rolled back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.db import after_commit


@dataclass(frozen=True)
class Event:
    """What happened, and who may see it.

    ``user_id`` marks an event for one member; ``organization_id`` plus
    ``team_id`` lets admins of that scope see queue events.
    """

    type: str
    data: dict[str, Any]
    organization_id: int | None = None
    user_id: int | None = None
    team_id: int | None = None
    audience: str = "user"  # "user" (the member named) or "admins" (the queue's viewers)
    id: int = field(default=0)


class Subscription(Protocol):
    def __aiter__(self) -> AsyncIterator[Event]: ...


class EventBus(Protocol):
    async def publish(self, events: list[Event]) -> None: ...

    def subscribe(self) -> contextlib.AbstractAsyncContextManager[asyncio.Queue[Event]]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class InProcessBus:
    """Fan-out inside one process (the SQLite, single-process deployment)."""

    def __init__(self, *, queue_size: int = 1000) -> None:
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._queue_size = queue_size
        self._ids = itertools.count(1)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self._subscribers.clear()

    def deliver(self, event: Event) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                # A stuck client must not hold up everyone else; it resyncs on reconnect.
                self._subscribers.discard(queue)

    async def publish(self, events: list[Event]) -> None:
        for event in events:
            self.deliver(event)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[Event]]:
        queue: asyncio.Queue[Event] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)


_bus: EventBus = InProcessBus()


def get_bus() -> EventBus:
    return _bus


def set_bus(bus: EventBus) -> None:
    global _bus
    _bus = bus


def emit(session: AsyncSession, event: Event) -> None:
    """Queue ``event`` for publication once ``session`` commits."""
    pending: list[Event] | None = session.info.get("events")
    if pending is None:
        pending = []
        session.info["events"] = pending

        async def _flush() -> None:
            await get_bus().publish(pending)

        after_commit(session, _flush)
    pending.append(event)
