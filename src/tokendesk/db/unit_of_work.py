"""Engines and the unit of work.

SQLite is a real deployment target: WAL, a busy timeout, and write transactions
that begin IMMEDIATE so a read-then-write transaction waits for the lock instead
of failing with "database is locked". Inside one process, writers also queue on
an asyncio lock, which is fairer and cheaper than SQLite's sleeping busy handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, CursorResult, Executable, event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from tokendesk.db.fallback import FALLBACK, Fallback
from tokendesk.db.refusals import refusal
from tokendesk.db.sqlite_quick import QuickPath

if TYPE_CHECKING:
    from tokendesk.events.bus import EventBus
    from tokendesk.observability.metrics import Metrics

log = logging.getLogger(__name__)

AfterCommit = Callable[[], Any]
T = TypeVar("T")
# The longest a new PostgreSQL connection may take to open.
CONNECT_SECONDS = 5.0


class Database:
    """Owns the engines and hands out transactions.

    ``transaction(write=True)`` is the one unit-of-work helper used by HTTP
    requests, the CLI and background jobs: it commits on success, rolls back on
    error, then runs the after-commit callbacks (real-time events) only once the
    data is durable. SQLite refusing the transaction (a read-only file, a full disk)
    leaves it as :class:`~tokendesk.db.refusals.StorageRefused`, a 503. The
    gateway's holds are the one exception, for speed on its hot path:
    :meth:`quick_write` on SQLite, one autocommitted statement on PostgreSQL;
    neither publishes events.

    The unit of work also publishes: ``bus`` is where the events of its committed
    transactions go (the runtime's), and each transaction hands it to
    :func:`tokendesk.events.bus.emit` in ``session.info``, so services that have only
    a session publish after commit without a global. Without a bus (the CLI, tools)
    events are dropped, as no server is listening to such a process.
    """

    def __init__(
        self,
        url: str,
        *,
        bus: EventBus | None = None,
        echo: bool = False,
        checkpoint_delay: float = 1.0,
    ) -> None:
        self.url = url
        self.bus = bus
        # The server's metrics, which transactions count what they commit in (set by
        # the runtime; None in the CLI and tools).
        self.metrics: Metrics | None = None
        self.is_sqlite = url.startswith("sqlite")
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        if self.is_sqlite:
            self.write_engine = self._sqlite_engine(url, immediate=True, echo=echo)
            self.read_engine = self._sqlite_engine(url, immediate=False, echo=echo)
        else:
            # A connection the server dropped (a restart) is found by the ping as it is
            # taken from the pool, and replaced; connecting is bounded, so a database
            # that does not answer fails a request in seconds, as 503, not in a minute.
            self.write_engine = create_async_engine(
                url,
                echo=echo,
                pool_size=10,
                max_overflow=20,
                pool_pre_ping=True,
                connect_args={"timeout": CONNECT_SECONDS},
            )
            self.read_engine = self.write_engine
        self._write_sessions = async_sessionmaker(self.write_engine, expire_on_commit=False)
        self._read_sessions = async_sessionmaker(self.read_engine, expire_on_commit=False)
        # SQLite's shortcut past the driver's thread for the hot paths (see QuickPath).
        self.quick_path: QuickPath | None = None
        if self._write_lock is not None:
            self.quick_path = QuickPath(
                url,
                write_lock=self._write_lock,
                read_engine=self.read_engine,
                checkpoint_delay=checkpoint_delay,
            )

    @staticmethod
    def _sqlite_engine(url: str, *, immediate: bool, echo: bool) -> AsyncEngine:
        engine = create_async_engine(url, echo=echo, connect_args={"timeout": 30})
        begin_sql = "BEGIN IMMEDIATE" if immediate else "BEGIN"

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy, not the driver, decide when a transaction begins.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            if not immediate:
                # Reads never write: SQLite refuses a write on a read transaction's
                # connection instead of taking the writer's lock behind its queue.
                cursor.execute("PRAGMA query_only=ON")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(connection: Any) -> None:
            connection.exec_driver_sql(begin_sql)

        return engine

    @contextlib.asynccontextmanager
    async def transaction(self, *, write: bool = True) -> AsyncIterator[AsyncSession]:
        lock = self._write_lock if write else None
        if lock is not None:
            await lock.acquire()
        try:
            maker = self._write_sessions if write else self._read_sessions
            async with maker() as session:
                session.info["after_commit"] = []
                session.info["bus"] = self.bus
                session.info["metrics"] = self.metrics
                session.info["writes"] = write
                try:
                    yield session
                    await session.commit()
                except BaseException as exc:
                    await session.rollback()
                    refused = refusal(exc, writing=write) if self.is_sqlite else None
                    if refused is None:
                        raise
                    # A connection opened while the file was read-only stays so once
                    # the operator has fixed it: the pool's are closed, the next
                    # transaction opens one anew. (Writers queue on the write lock, so
                    # no other write transaction holds one of them now.)
                    await (self.write_engine if write else self.read_engine).dispose()
                    log.warning(
                        "the database refused a transaction: %s (%s)", refused.cause, refused.detail
                    )
                    raise refused from exc
        finally:
            if lock is not None:
                lock.release()
        for callback in session.info["after_commit"]:
            result = callback()
            if asyncio.iscoroutine(result):
                await result

    async def run(self, work: Callable[[AsyncSession], Awaitable[T]], *, write: bool = True) -> T:
        """``work`` in one transaction: on SQLite's quick path where it can run there
        (:meth:`quick_transaction`, :meth:`quick_read`), otherwise a normal one."""
        quick = await (self.quick_transaction if write else self.quick_read)(work)
        if not isinstance(quick, Fallback):
            return quick
        async with self.transaction(write=write) as session:
            return await work(session)

    async def quick_write(self, work: Callable[[sqlite3.Connection], T]) -> T | Fallback:
        """:meth:`QuickPath.write` where there is a quick path, else FALLBACK (run nothing)."""
        return FALLBACK if self.quick_path is None else await self.quick_path.write(work)

    async def quick_transaction(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T | Fallback:
        """:meth:`QuickPath.transaction` where there is a quick path, else FALLBACK."""
        if self.quick_path is None:
            return FALLBACK
        return await self.quick_path.transaction(work, bus=self.bus)

    async def quick_read(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T | Fallback:
        """:meth:`QuickPath.read` where there is a quick path, else FALLBACK."""
        return FALLBACK if self.quick_path is None else await self.quick_path.read(work)

    async def dispose(self) -> None:
        if self.quick_path is not None:
            await self.quick_path.dispose()
        await self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            await self.read_engine.dispose()


def dialect_of(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


async def run_core(
    session: AsyncSession, statement: Executable, params: Any = None
) -> CursorResult[*tuple[Any, ...]]:
    """Run a Core statement on the session's connection, without the ORM's per-call work.

    The connection does not flush pending ORM changes by itself: flush first where
    the statement must see them. Inside :meth:`Database.quick_transaction` the
    statement runs at once on the quick connection.
    """
    quick: Connection | None = session.info.get("quick")
    if quick is not None:
        return quick.execute(statement, params)
    connection = await session.connection()
    return await connection.execute(statement, params)


def writes(session: AsyncSession) -> bool:
    """Whether ``session`` is a write transaction (:meth:`Database.transaction`)."""
    return bool(session.info.get("writes"))


def after_commit(session: AsyncSession, callback: AfterCommit) -> None:
    """Run ``callback`` once the session's transaction has committed (never on rollback)."""
    session.info.setdefault("after_commit", []).append(callback)
