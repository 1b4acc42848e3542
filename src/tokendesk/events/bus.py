"""The real-time event bus interface and its in-process implementation.

Services call :func:`emit` inside a transaction; the event reaches the bus only
after that transaction commits, so nobody is told about data that was rolled back.
The bus is the runtime's (:mod:`tokendesk.runtime`), reached through the session's
database; nothing here is global.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.db import after_commit


@dataclass(slots=True)
class Event:
    """What happened, and who may see it.

    ``user_id`` marks an event for one member; ``organization_id`` plus
    ``team_id`` lets admins of that scope see queue events.

    Never changed once emitted (one event object reaches every subscriber). Not
    a frozen dataclass only because a bulk decision builds 20,000 of them, and a
    frozen one costs three times as much to construct.
    """

    type: str
    data: dict[str, Any]
    organization_id: int | None = None
    user_id: int | None = None
    team_id: int | None = None
    # "user" (the member named), "admins" (the queue's viewers) or "system" (server internals)
    audience: str = "user"
    id: int = field(default=0)


class EventBus(Protocol):
    async def publish(self, events: list[Event]) -> None: ...

    def subscribe(
        self,
        *,
        user_id: int | None = None,
        admin_organization_id: int | None = None,
        system: bool = False,
    ) -> contextlib.AbstractAsyncContextManager[asyncio.Queue[Event]]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class InProcessBus:
    """Fan-out inside one process (the SQLite, single-process deployment).

    Subscribers say whose events they want (a user, the admin queue of an
    organization, or everything), and each event is routed only to those
    queues: delivering to one member of 1,000 connected clients wakes one stream.
    """

    def __init__(self, *, queue_size: int = 1000) -> None:
        self._everything: set[asyncio.Queue[Event]] = set()
        self._by_user: dict[int, set[asyncio.Queue[Event]]] = {}
        self._by_admin_org: dict[int, set[asyncio.Queue[Event]]] = {}
        self._system: set[asyncio.Queue[Event]] = set()
        self._queue_size = queue_size

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self._everything.clear()
        self._by_user.clear()
        self._by_admin_org.clear()
        self._system.clear()

    def _targets(self, event: Event) -> set[asyncio.Queue[Event]]:
        targets = set(self._everything)
        if event.audience == "user" and event.user_id is not None:
            targets |= self._by_user.get(event.user_id, set())
        elif event.audience == "admins" and event.organization_id is not None:
            targets |= self._by_admin_org.get(event.organization_id, set())
        elif event.audience == "system":
            targets |= self._system
        return targets

    def deliver(self, event: Event) -> None:
        for queue in self._targets(event):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                # A stuck client must not hold up everyone else; it resyncs on reconnect.
                self._discard(queue)

    def _discard(self, queue: asyncio.Queue[Event]) -> None:
        self._everything.discard(queue)
        self._system.discard(queue)
        for index in (self._by_user, self._by_admin_org):
            for key in [k for k, queues in index.items() if queue in queues]:
                index[key].discard(queue)
                if not index[key]:
                    del index[key]

    async def publish(self, events: list[Event]) -> None:
        for event in events:
            self.deliver(event)

    @contextlib.asynccontextmanager
    async def subscribe(
        self,
        *,
        user_id: int | None = None,
        admin_organization_id: int | None = None,
        system: bool = False,
    ) -> AsyncIterator[asyncio.Queue[Event]]:
        """Events for ``user_id`` and the admin queue of ``admin_organization_id``;
        ``system`` events are for server internals (cache invalidation); with none
        of these, every event (tests and tools)."""
        queue: asyncio.Queue[Event] = asyncio.Queue(self._queue_size)
        if system:
            self._system.add(queue)
        elif user_id is None and admin_organization_id is None:
            self._everything.add(queue)
        if user_id is not None:
            self._by_user.setdefault(user_id, set()).add(queue)
        if admin_organization_id is not None:
            self._by_admin_org.setdefault(admin_organization_id, set()).add(queue)
        try:
            yield queue
        finally:
            self._discard(queue)


def emit(session: AsyncSession, *events: Event) -> None:
    """Queue ``events`` for publication once ``session`` commits, on the bus its
    database was given (see :class:`tokendesk.db.Database`); none, none published."""
    pending: list[Event] | None = session.info.get("events")
    if pending is None:
        bus: EventBus | None = session.info.get("bus")
        if bus is None:
            return
        pending = []
        session.info["events"] = pending

        async def _flush() -> None:
            await bus.publish(pending)

        after_commit(session, _flush)
    pending.extend(events)


ACCESS_CHANGED = "access.changed"


def access_changed(session: AsyncSession, *user_ids: int) -> None:
    """Tell these users' open event streams (after commit, on every instance) that
    what their caller may see has changed: each checks its credentials again and
    ends if they no longer hold or no longer mean the same (see ``routes``).

    Sent when a user is deactivated, changes role or team, loses or gains a team to
    own, changes password, or has a key revoked.
    """
    emit(
        session,
        *(
            Event(type=ACCESS_CHANGED, data={"user_id": user_id}, user_id=user_id)
            for user_id in dict.fromkeys(user_ids)
        ),
    )
