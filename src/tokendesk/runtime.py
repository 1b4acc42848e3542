"""The process's runtime: everything a server keeps between requests, in one object.

Built in the application's lifespan (:func:`tokendesk.app.create_app`) and closed
there in reverse order; requests reach it as ``request.app.state.runtime``
(``deps.py``, the gateway's shortcut). Nothing of it lives in a module: a test,
a benchmark or a CLI command builds its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

from tokendesk.accounts.sso_config import SingleSignOn
from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.db.serving_lock import DatabaseBusy, held, sqlite_path
from tokendesk.events.bus import EventBus, InProcessBus
from tokendesk.events.stream import LiveStreams
from tokendesk.gateway.routes import Gateway
from tokendesk.ledger import scheduler
from tokendesk.limits import PerUserLimit
from tokendesk.metering.ingest import UsageRecorder
from tokendesk.migrations.runner import head_revision
from tokendesk.notifications.repository import outbox_depth
from tokendesk.notifications.worker import NotificationWorker
from tokendesk.observability.scrape import Probes, RuntimeCollector
from tokendesk.web.ratelimit import LoginLimiter

if TYPE_CHECKING:
    from tokendesk.observability.routes import MetricsServer

log = logging.getLogger(__name__)

# Exit status of a server that could not finish settling within its grace period.
GRACE_EXCEEDED = 70


def make_bus(settings: Settings) -> EventBus:
    """The bus ``settings`` ask for: in-process on SQLite, LISTEN/NOTIFY on PostgreSQL."""
    kind = settings.event_bus
    if kind == "auto":
        kind = "memory" if settings.is_sqlite else "postgres"
    if kind == "postgres":
        from tokendesk.events.pg_bus import PostgresBus

        return PostgresBus(settings.database_url)
    return InProcessBus()


class Runtime:
    """One server process's database, event bus, gateway, usage recorder, sign-in
    limiter, identity providers, event-stream limit, scheduler, notification worker
    and metrics."""

    def __init__(self, settings: Settings, database: Database, bus: EventBus) -> None:
        self.settings = settings
        self.database = database
        # The database publishes its transactions' events here (Database.bus).
        self.bus = bus
        self.gateway = Gateway(settings, database, bus=bus)
        self.metrics = self.gateway.metrics
        # Transactions count what they commit here (observability.counted_decisions).
        database.metrics = self.metrics
        self.probes = Probes()
        self.metrics.add_collector(self.probes)
        self.metrics.add_collector(RuntimeCollector(self))
        self.usage = UsageRecorder(database, metrics=self.metrics)
        self.login_limiter = LoginLimiter()
        self.sso = SingleSignOn(settings)
        self.event_streams = PerUserLimit(settings.event_streams_per_user)
        # Server-sent events' ids, unique in the process.
        self.event_ids: Iterator[int] = itertools.count(1)
        # Every open event stream, so shutting down can end them all (LiveStreams.end_all).
        self.live_streams = LiveStreams()
        # Set when the server was told to stop (SIGTERM): /readyz answers 503 from then on.
        self.stopping = asyncio.Event()
        self.scheduler: asyncio.Task[None] | None = None
        self.notifications = NotificationWorker(settings, database)
        self.probes.add(outbox_depth)
        self.notifier: asyncio.Task[None] | None = None
        # Read from the scripts once: readiness compares the database with it on every probe.
        self.schema_head = head_revision()
        # /metrics on a port of its own (TOKENDESK_METRICS_PORT), once started.
        self.metrics_server: MetricsServer | None = None

    def begin_shutdown(self) -> None:
        """The server stops accepting connections (uvicorn does that): end every open
        event stream now, each with a reconnect hint, since a stream never ends by
        itself and would hold the shutdown for the whole grace period; calls in
        flight go on, within ``shutdown_calls_seconds``."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        ended = self.live_streams.end_all()
        log.info(
            "shutting down: %d event streams closed, calls in flight have %g s",
            ended,
            self.settings.shutdown_calls_seconds,
        )

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls, settings: Settings, *, database: Database | None = None
    ) -> AsyncIterator[Runtime]:
        """The runtime, started, and closed in reverse order when done.

        Without ``database`` the runtime builds and owns the bus and the database
        ``settings`` name. With one (tests, benchmarks), it uses that database and
        its bus, and leaves closing them to their owner.
        """
        async with contextlib.AsyncExitStack() as stack:
            if database is None:
                served = sqlite_path(settings.database_url)
                if served is not None:
                    # Held while the process serves: `tokendesk restore` refuses then.
                    try:
                        stack.enter_context(held(served, exclusive=False))
                    except DatabaseBusy:
                        raise RuntimeError(
                            f"{served} is being restored (tokendesk restore); "
                            "start the server once that is done"
                        ) from None
                bus = make_bus(settings)
                await bus.start()
                stack.push_async_callback(bus.stop)
                database = Database(settings.database_url, bus=bus)
                stack.push_async_callback(database.dispose)
            if database.bus is None:
                raise ValueError("a database given to the runtime needs the bus it publishes on")
            runtime = cls(settings, database, database.bus)
            stack.push_async_callback(runtime.gateway.close)
            runtime.gateway.watch_credentials()
            stack.push_async_callback(runtime.usage.close)
            if settings.metrics_enabled and settings.metrics_port is not None:
                from tokendesk.observability.routes import MetricsServer

                runtime.metrics_server = MetricsServer(runtime)
                await runtime.metrics_server.start()
                stack.push_async_callback(runtime.metrics_server.stop)
            if settings.scheduler_enabled:
                task = asyncio.create_task(
                    scheduler.run_forever(
                        database,
                        interval=settings.scheduler_interval_seconds,
                        on_tick=runtime.metrics.scheduler_tick,
                    )
                )
                runtime.scheduler = task
                stack.push_async_callback(_cancelled, task)
            stack.push_async_callback(runtime.notifications.close)
            if settings.notify_worker_enabled:
                notifier = asyncio.create_task(runtime.notifications.run_forever())
                runtime.notifier = notifier
                stack.push_async_callback(_cancelled, notifier)
            yield runtime


@contextlib.contextmanager
def stopping_on_signals(runtime: Runtime) -> Iterator[None]:
    """While a server serves ``runtime``: SIGTERM and SIGINT first begin its shutdown
    (:meth:`Runtime.begin_shutdown`), then reach the server's own handler (uvicorn's:
    stop accepting, wait for the connections in flight, run the lifespan's shutdown).

    Installed only over a handler of Python's own in the main thread, as uvicorn has
    while it serves; anywhere else (a test's thread, another server) it does nothing.
    The first signal also arms a watchdog: a process still alive
    ``shutdown_grace_seconds`` later (settling hangs on a database that is gone)
    exits with status 70, and the holds it could not settle expire on schedule.
    """
    signals = (signal.SIGTERM, signal.SIGINT)
    previous: dict[int, Any] = {sig: signal.getsignal(sig) for sig in signals}
    if threading.current_thread() is not threading.main_thread() or not all(
        callable(handler) for handler in previous.values()
    ):
        yield
        return
    loop = asyncio.get_running_loop()
    grace = runtime.settings.shutdown_grace_seconds

    def handler(sig: int, frame: FrameType | None) -> None:
        if not runtime.stopping.is_set():
            watchdog = threading.Timer(grace, _grace_exceeded, args=(grace,))
            watchdog.daemon = True
            watchdog.start()
        loop.call_soon_threadsafe(runtime.begin_shutdown)
        then = previous[sig]
        if callable(then):
            then(sig, frame)

    for sig in signals:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for restored, then in previous.items():
            signal.signal(restored, then)


def _grace_exceeded(grace: float) -> None:
    log.error("shutdown took longer than its grace period (%g s): exiting now", grace)
    logging.shutdown()
    os._exit(GRACE_EXCEEDED)


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
