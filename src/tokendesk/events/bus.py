"""The real-time event bus interface and its in-process implementation.

Services call :func:`emit` inside a transaction; the event reaches the bus only
after that transaction commits, so nobody is told about data that was rolled back.
The bus is the runtime's (:mod:`tokendesk.runtime`), reached through the session's
database; nothing here is global.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
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


class Inbox:
    """One subscriber's events, in order: a bounded queue with a single reader.

    Lighter than :class:`asyncio.Queue` (one list and, only while its reader
    waits, one future; a queue holds four deques of 600 bytes each even when empty),
    since 10,000 open event streams hold one each; and a
    reader can be woken without an event (:meth:`wake`), so an event stream
    waits on its inbox alone for events, heartbeats, its end and its client's
    disconnection, with no timer task per wait.
    """

    __slots__ = ("_items", "_size", "_waiter", "dropped", "on_drop")

    def __init__(self, size: int) -> None:
        # A list: events for one stream come a few at a time, so taking from its front
        # costs nothing, and an empty list is a tenth of an empty deque.
        self._items: list[Event] = []
        self._size = size
        self._waiter: asyncio.Future[None] | None = None
        # Set once the bus gave up on this subscriber (it fell ``size`` events behind).
        self.dropped = False
        self.on_drop: Callable[[], None] | None = None

    def put_nowait(self, event: Event) -> None:
        if len(self._items) >= self._size:
            raise asyncio.QueueFull
        self._items.append(event)
        self.wake()

    def get_nowait(self) -> Event:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.pop(0)

    async def get(self) -> Event:
        while not self._items:
            await self.wait()
        return self._items.pop(0)

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def wake(self) -> None:
        """Let the reader's :meth:`wait` return, event or not."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until an event is in, or someone calls :meth:`wake`."""
        if self._items:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def drop(self) -> None:
        self.dropped = True
        if self.on_drop is not None:
            self.on_drop()
        self.wake()


class EventBus(Protocol):
    async def publish(self, events: list[Event]) -> None: ...

    def subscribe(
        self,
        *,
        user_id: int | None = None,
        admin_organization_id: int | None = None,
        system: bool = False,
    ) -> contextlib.AbstractAsyncContextManager[Inbox]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    @property
    def listening(self) -> bool:
        """Whether events published anywhere reach this process's subscribers."""
        ...


class InProcessBus:
    """Fan-out inside one process (the SQLite, single-process deployment).

    Subscribers say whose events they want (a user, the admin queue of an
    organization, or everything), and each event is routed only to those
    queues: delivering to one member of 1,000 connected clients wakes one stream.
    """

    def __init__(self, *, queue_size: int = 1000) -> None:
        self._everything: set[Inbox] = set()
        self._by_user: dict[int, set[Inbox]] = {}
        self._by_admin_org: dict[int, set[Inbox]] = {}
        self._system: set[Inbox] = set()
        # Each subscriber's (user, admin organization), so leaving touches only its own
        # entries: scanning every user's set cost 10,000 streams 10,000 steps each.
        self._keys: dict[Inbox, tuple[int | None, int | None]] = {}
        self._queue_size = queue_size

    async def start(self) -> None:
        return None

    @property
    def listening(self) -> bool:
        # Publishing is delivering: nothing to lose touch with.
        return True

    async def stop(self) -> None:
        self._everything.clear()
        self._by_user.clear()
        self._by_admin_org.clear()
        self._system.clear()
        self._keys.clear()

    def _targets(self, event: Event) -> set[Inbox]:
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
                # A stuck client must not hold up everyone else: its stream ends (see
                # Inbox.on_drop) and the client resyncs from a snapshot on reconnect.
                self._discard(queue)
                queue.drop()

    def _discard(self, queue: Inbox) -> None:
        self._everything.discard(queue)
        self._system.discard(queue)
        user_id, admin_org = self._keys.pop(queue, (None, None))
        for index, key in ((self._by_user, user_id), (self._by_admin_org, admin_org)):
            queues = index.get(key) if key is not None else None
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del index[key]  # type: ignore[arg-type]

    async def publish(self, events: list[Event]) -> None:
        for event in events:
            self.deliver(event)

    def resync(self) -> None:
        """Tell every subscriber that events may have been missed (the bus lost touch
        with the database and is back): each open stream sends a fresh snapshot, each
        cache forgets what it kept. The event reaches everyone, whatever they asked for."""
        event = Event(type=RESYNC, data={}, audience="system")
        for queue in list(self._keys):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._discard(queue)
                queue.drop()

    @contextlib.asynccontextmanager
    async def subscribe(
        self,
        *,
        user_id: int | None = None,
        admin_organization_id: int | None = None,
        system: bool = False,
    ) -> AsyncIterator[Inbox]:
        """Events for ``user_id`` and the admin queue of ``admin_organization_id``;
        ``system`` events are for server internals (cache invalidation); with none
        of these, every event (tests and tools)."""
        queue = Inbox(self._queue_size)
        if system:
            self._system.add(queue)
        elif user_id is None and admin_organization_id is None:
            self._everything.add(queue)
        if user_id is not None:
            self._by_user.setdefault(user_id, set()).add(queue)
        if admin_organization_id is not None:
            self._by_admin_org.setdefault(admin_organization_id, set()).add(queue)
        self._keys[queue] = (user_id, admin_organization_id)
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
# Events may have been missed (see InProcessBus.resync); never sent to a client as is.
RESYNC = "events.resync"


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
