"""The response behind every event stream: Server-Sent Events that cost little while idle.

Measured at 10,000 open streams on one instance (benchmarks/RESULTS.md), what an
idle stream cost was its machinery, not its data: Starlette's
``StreamingResponse`` runs a task group (a task and cancel scopes) beside the
request's task, and an ``asyncio.wait_for(queue.get(), 15)`` per wait made one
more task, a timer and a full ``asyncio.Queue``. Every stream opened within the
same few seconds so every heartbeat fell due in the same instant: 10,000 wakes,
tasks and writes in one burst, which an approval waited behind.

Here a stream is the request's own task waiting on its :class:`~tokendesk.events.bus.Inbox`
alone, plus one task for the client's disconnection: events, heartbeats, the
end at a credential's expiry, a drop by the bus and the server's shutdown all
wake that one wait. Heartbeats come from one ticker that visits a random slot
of the period per stream, so they are spread out evenly (:class:`LiveStreams`);
and the response is sent from outside the framework's routing (:class:`HandOff`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokendesk.db import Database, utcnow
from tokendesk.events.bus import Event, Inbox

log = logging.getLogger(__name__)

# The most a stream stays silent: proxies and browsers keep a connection that
# says something this often.
HEARTBEAT_SECONDS = 15.0
# How long a browser waits before it opens a stream again (after a drop or a refusal).
RECONNECT_SECONDS = 2
PING = ": ping\n\n"
# Heartbeat slots over the period (one every 0.1 s at 15 s).
SLOTS = 150

# What a renderer answers for an event: the frame to send, None to send nothing,
# or END to close the stream.
END = object()
Render = Callable[[Event], Awaitable[str | object | None]]
Subscribe = Callable[[], contextlib.AbstractAsyncContextManager[Inbox]]
# A stream's snapshot, read in the session given.
SnapshotOf = Callable[[AsyncSession], Awaitable[dict[str, Any]]]
# Streams reading a fresh snapshot at once after the bus resyncs; the rest wait their
# turn, so 10,000 streams do not all ask the pool for a connection in one instant.
REFRESHING_AT_ONCE = 8


class _Live:
    """One open stream's state, woken through its inbox."""

    __slots__ = ("_expiry", "ending", "inbox", "ping_due", "sending", "slot", "task")

    def __init__(self, inbox: Inbox, task: asyncio.Task[object] | None) -> None:
        self.inbox = inbox
        self.task = task
        self.ending: str | None = None
        self.ping_due = False
        self.sending = False
        self.slot = 0
        self._expiry: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop, ends_in: float | None) -> None:
        if ends_in is not None:
            self._expiry = loop.call_later(max(0.0, ends_in), self.end, "expired")

    def beat(self) -> None:
        self.ping_due = True
        self.inbox.wake()

    def end(self, why: str = "closed") -> None:
        """End the stream at its next step (a no-op once it is ending)."""
        if self.ending is None:
            self.ending = why
            self.inbox.wake()

    def dropped(self) -> None:
        # The bus gave up on this stream: its client reads too slowly (or not at all),
        # so the stream is most likely stuck writing to it; stop that write too.
        self.end("dropped")
        if self.sending and self.task is not None:
            self.task.cancel()

    def gone(self, _listener: asyncio.Task[None]) -> None:
        self.end("disconnected")

    def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()

    async def next(self) -> Event | str | None:
        """The next event, PING when a heartbeat is due, or None once the stream ends."""
        while True:
            if self.ending is not None:
                return None
            if not self.inbox.empty():
                return self.inbox.get_nowait()
            if self.ping_due:
                self.ping_due = False
                return PING
            await self.inbox.wait()


class LiveStreams:
    """The process's open event streams: their heartbeats, and ending them all at once
    (shutdown: each client reconnects after the ``retry`` it was told, to another
    instance or to this one restarted).

    Heartbeats come from one ticker, not a timer per stream: each stream takes one of
    :data:`SLOTS` slots at random as it opens and the ticker visits one slot per
    ``HEARTBEAT_SECONDS / SLOTS``, so every stream hears from it once a period and
    10,000 streams opened in the same second beat about 70 at a time, not 10,000.
    The ticker runs while any stream is open.
    """

    def __init__(self) -> None:
        self._open: set[_Live] = set()
        self._slots: list[set[_Live]] = [set() for _ in range(SLOTS)]
        self._ticker: asyncio.Task[None] | None = None
        self._refreshing = asyncio.Semaphore(REFRESHING_AT_ONCE)

    async def refreshed(self, database: Database, snapshot_of: SnapshotOf) -> dict[str, Any] | None:
        """A stream's fresh snapshot, :data:`REFRESHING_AT_ONCE` streams at a time; None
        when it cannot be read (the database is gone again): the stream stays open, as
        the client's reconnection would be refused just the same."""
        async with self._refreshing:
            try:
                async with database.transaction(write=False) as session:
                    return await snapshot_of(session)
            except Exception as exc:
                log.warning("a stream's fresh snapshot failed: %s: %s", type(exc).__name__, exc)
                return None

    def __len__(self) -> int:
        return len(self._open)

    def add(self, stream: _Live) -> None:
        self._open.add(stream)
        stream.slot = random.randrange(SLOTS)
        self._slots[stream.slot].add(stream)
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    def discard(self, stream: _Live) -> None:
        self._open.discard(stream)
        self._slots[stream.slot].discard(stream)
        if not self._open and self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    def end_all(self) -> int:
        """End every open stream at its next step; how many there were."""
        streams = list(self._open)
        for stream in streams:
            stream.end("shutdown")
        return len(streams)

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        step = HEARTBEAT_SECONDS / SLOTS
        # Due times counted from the start, so the period does not drift with load.
        started, visits = loop.time(), 0
        while True:
            visits += 1
            await asyncio.sleep(max(0.0, started + visits * step - loop.time()))
            for stream in self._slots[visits % SLOTS]:
                stream.beat()


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStream(Response):
    """A ``text/event-stream`` response: ``opening`` frames, then each event from the
    inbox ``subscribe`` opens, as ``renderer`` writes it, and a heartbeat comment at
    most every :data:`HEARTBEAT_SECONDS`; until ``renderer`` answers END, ``ends_at``
    passes, the bus drops the stream, ``streams.end_all()`` or the client leaves."""

    media_type = "text/event-stream"

    def __init__(
        self,
        *,
        subscribe: Subscribe,
        opening: list[str],
        renderer: Render,
        streams: LiveStreams,
        ends_at: datetime | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.subscribe = subscribe
        self.opening = opening
        self.renderer = renderer
        self.streams = streams
        self.ends_at = ends_at
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        async with self.subscribe() as inbox:
            stream = _Live(inbox, asyncio.current_task())
            inbox.on_drop = stream.dropped
            self.streams.add(stream)
            listener = loop.create_task(_until_disconnect(receive))
            listener.add_done_callback(stream.gone)
            ends_in = None
            if self.ends_at is not None:
                ends_in = (self.ends_at - utcnow()).total_seconds()
            stream.start(loop, ends_in)
            try:
                await self._run(stream, send)
            finally:
                stream.stop()
                listener.cancel()
                self.streams.discard(stream)

    async def _run(self, stream: _Live, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        if not await self._send(stream, send, start):
            return
        opening, self.opening = self.opening, []
        for text in opening:
            if not await self._send(stream, send, _body(text)):
                return
        del opening
        while True:
            item = await stream.next()
            if item is None:
                break
            if isinstance(item, Event):
                rendered = await self.renderer(item)
                if rendered is END:
                    break
                if not isinstance(rendered, str):
                    continue
                item = rendered
            if not await self._send(stream, send, _body(item)):
                return
        if stream.ending == "shutdown" and not await self._send(
            stream, send, _body(shutdown_hint())
        ):
            return
        if stream.ending not in ("disconnected", "dropped"):
            await self._send(stream, send, {"type": "http.response.body", "body": b""})

    async def _send(self, stream: _Live, send: Send, message: Message) -> bool:
        """Send ``message``; False if the bus dropped the stream while it waited to."""
        stream.sending = True
        try:
            await send(message)
        except asyncio.CancelledError:
            task = stream.task
            if stream.ending != "dropped" or task is None or task.uncancel() > 0:
                raise
            # Left unfinished on purpose: the server closes a connection whose
            # response never completed, which is all a stuck client can be told.
            return False
        finally:
            stream.sending = False
        return True


def shutdown_hint() -> str:
    """The last frame of a stream the server ends as it shuts down: reconnect after a
    pause drawn between one and three times the usual one, so the clients of an
    instance that stops do not all come back to the others in the same instant."""
    pause = random.randint(RECONNECT_SECONDS * 1000, 3 * RECONNECT_SECONDS * 1000)
    return f": server shutting down\nretry: {pause}\n\n"


def _body(text: str) -> Message:
    return {"type": "http.response.body", "body": text.encode(), "more_body": True}


# Where a handed-off response waits for :class:`HandOff` (a list, shared even if a
# layer in between copies the scope).
HANDOFF_KEY = "tokendesk.handoff"
# Event streams authenticating and reading their snapshot at once; the rest wait
# their turn, cheaply, before any database work. 10,000 clients reconnecting
# together (a restart) otherwise all waited inside the connection pool, each with
# its request's whole stack, past the pool's 30-second timeout.
OPENING_AT_ONCE = 8


def handed_off(scope: Scope, response: Response) -> Response:
    """``response``, to be sent by :class:`HandOff` once the framework's routing and
    dependencies are done with the request, or as usual where none is installed."""
    if HANDOFF_KEY not in scope:
        return response
    return _Handed(response)


class _Handed(Response):
    def __init__(self, response: Response) -> None:
        # Not Response.__init__: this only forwards, but the framework reads these.
        self.response = response
        self.status_code = response.status_code
        self.raw_headers = response.raw_headers
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # What the route left to do once its response is out (a key's due "last
        # used" stamp) goes with it: HandOff runs it beside the stream.
        scope[HANDOFF_KEY].append((self.response, self.background))


class HandOff:
    """Sends long-lived responses (event streams) outside the framework's stack.

    A stream that ran where the route returned it kept every layer of routing,
    dependency solving and exception handling alive for as long as it was open:
    some 30 coroutines, six exit stacks and their closures, about half of what an
    idle stream cost (benchmarks/RESULTS.md). A route returns
    :func:`handed_off` instead; once the framework has finished with the request
    (its database session closed, its dependencies exited) this middleware sends
    the response with what is left: the server, the error and security-header
    layers and the body limit, all outside it. Only GETs of paths ``is_stream``
    accepts are handed off, and their openings pass :data:`OPENING_AT_ONCE` at a time.
    """

    def __init__(self, app: ASGIApp, *, is_stream: Callable[[str], bool]) -> None:
        self.app = app
        self.is_stream = is_stream
        self._opening = asyncio.Semaphore(OPENING_AT_ONCE)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or not self._streams(scope):
            await self.app(scope, receive, send)
            return
        scope[HANDOFF_KEY] = []
        async with self._opening:
            await self._route(scope, receive, send)
        handed: list[tuple[Response, BackgroundTask | None]] = scope.pop(HANDOFF_KEY)
        if not handed:
            return
        response, after = handed[0]
        if after is None:
            await response(scope, receive, send)
            return
        # Beside the stream, not before it: the stamp is a write, which on SQLite waits
        # for whoever holds the writer, and a stream's snapshot never waits for a
        # writer. Awaited when the stream ends, so a stream leaves nothing behind.
        work = asyncio.create_task(after())
        try:
            await response(scope, receive, send)
        finally:
            try:
                await work
            except Exception:
                log.exception("the work left after an event stream's opening failed")

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        before = set(scope)
        await self.app(scope, receive, send)
        if scope[HANDOFF_KEY]:
            # What routing left in the scope (its exit stacks, already exited, the
            # route, the endpoint) would live as long as the stream, which needs none.
            for key in [key for key in scope if key not in before]:
                del scope[key]

    def _streams(self, scope: Scope) -> bool:
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        return self.is_stream(path)
