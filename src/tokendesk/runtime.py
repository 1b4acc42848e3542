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
from collections.abc import AsyncIterator, Iterator

from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.events.bus import EventBus, InProcessBus
from tokendesk.gateway.routes import Gateway
from tokendesk.ledger import scheduler
from tokendesk.limits import PerUserLimit
from tokendesk.metering.ingest import UsageRecorder
from tokendesk.web.ratelimit import LoginLimiter


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
    limiter, event-stream limit and scheduler."""

    def __init__(self, settings: Settings, database: Database, bus: EventBus) -> None:
        self.settings = settings
        self.database = database
        # The database publishes its transactions' events here (Database.bus).
        self.bus = bus
        self.gateway = Gateway(settings, database, bus=bus)
        self.usage = UsageRecorder(database)
        self.login_limiter = LoginLimiter()
        self.event_streams = PerUserLimit(settings.event_streams_per_user)
        # Server-sent events' ids, unique in the process.
        self.event_ids: Iterator[int] = itertools.count(1)
        self.scheduler: asyncio.Task[None] | None = None

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
            if settings.scheduler_enabled:
                task = asyncio.create_task(
                    scheduler.run_forever(database, interval=settings.scheduler_interval_seconds)
                )
                runtime.scheduler = task
                stack.push_async_callback(_cancelled, task)
            yield runtime


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
