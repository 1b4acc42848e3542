"""SQLite's quick path: a few Core statements run on the event loop itself.

On SQLite a tiny statement costs microseconds, far less than handing it to the
driver's thread and back, so the gateway's hot paths run on plain ``sqlite3``
connections of their own, under the process's write lock. Those writes never
checkpoint the WAL themselves (that would block the loop): a checkpoint runs on
the driver's thread a moment later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy import Connection, Engine, create_engine, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import StaticPool

from tokendesk.db.fallback import FALLBACK, Fallback
from tokendesk.db.refusals import refusal

if TYPE_CHECKING:
    from tokendesk.events.bus import EventBus

log = logging.getLogger(__name__)

T = TypeVar("T")

# A background WAL checkpoint copies while writers carry on, at most this many passes,
# until one finds at most this many new frames (page writes) to copy.
CHECKPOINT_PASSES = 4
CHECKPOINT_FEW_FRAMES = 32


class QuickPathUnavailable(Exception):
    """Work inside :meth:`QuickPath.transaction` needed more than Core statements
    (the ORM, say): it is rolled back and the caller takes the normal path."""


async def _refuse_connection() -> Any:
    raise QuickPathUnavailable("this session runs Core statements on the quick connection only")


class QuickPath:
    """The plain connections of one SQLite file database, and their WAL checkpoints."""

    def __init__(
        self,
        url: str,
        *,
        write_lock: asyncio.Lock,
        read_engine: AsyncEngine,
        checkpoint_delay: float,
    ) -> None:
        self.url = url
        self._write_lock = write_lock
        self.read_engine = read_engine
        # How long after a quick write its WAL frames are checkpointed (see _checkpoint_soon).
        self.checkpoint_delay = checkpoint_delay
        self._plain: dict[str, sqlite3.Connection] = {}
        self._plain_engines: dict[str, Engine] = {}
        self._no_connection: AsyncEngine | None = None
        self._checkpoint: asyncio.Task[None] | None = None
        self._disposed = False

    @property
    def usable(self) -> bool:
        """Whether there are plain connections to have: a file database, not in memory."""
        path = make_url(self.url).database
        return bool(path) and path != ":memory:" and not str(path).startswith("file:")

    async def write(self, work: Callable[[sqlite3.Connection], T]) -> T | Fallback:
        """Run ``work`` in a write transaction of its own, on the event loop itself.

        For a few tiny statements on SQLite's hot paths (the gateway's holds):
        SQLite does them in microseconds, far less than handing each one to the
        driver's thread and back. ``work`` gets a plain ``sqlite3`` connection
        inside BEGIN IMMEDIATE, taken under the process's write lock, and is
        committed when it returns (rolled back if it raises). It must not block:
        it runs on the loop. Returns :data:`FALLBACK`, having run nothing, when
        there is no such shortcut (PostgreSQL, an in-memory database) or another process is
        writing right now; the caller then takes the normal path, which waits.
        """
        async with self._write_lock:
            connection = self._plain_connection("write")
            if connection is None:
                return FALLBACK
            try:
                connection.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                return FALLBACK  # locked by another process: never wait on the loop
            try:
                result = work(connection)
                connection.execute("COMMIT")
            except BaseException as exc:
                # Never leave this connection inside a transaction: it would keep
                # SQLite's write lock from every process.
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                self._forget_refused(exc)
                raise
        self._checkpoint_soon()
        return result

    async def transaction(
        self, work: Callable[[AsyncSession], Awaitable[T]], *, bus: EventBus | None
    ) -> T | Fallback:
        """Run ``work`` in a write transaction on the quick connection, without handing
        each statement to the driver's thread.

        For a batch of Core statements on SQLite's hot paths (the gateway's
        settlements): ``work`` gets a session whose Core statements
        (:func:`run_core`) run on the quick connection, one after the other in the
        same turn of the loop, under the process's write lock, so nothing else
        interleaves while SQLite's writer is held. Anything else the session is
        asked to do (the ORM, say) raises :class:`QuickPathUnavailable`: the work
        is rolled back and :data:`FALLBACK` returned, as when there is no quick
        connection or another process is writing; the caller then takes the
        normal path. Events are published after the commit, on
        ``bus``, as :meth:`Database.transaction` does.
        """
        async with self._write_lock:
            engine = self._plain_engine("write")
            if engine is None:
                return FALLBACK
            try:
                with engine.connect() as connection:
                    try:
                        connection.exec_driver_sql("BEGIN IMMEDIATE")
                    except OperationalError:
                        return FALLBACK  # locked by another process: never wait on the loop
                    try:
                        with self._quick_session(connection) as session:
                            session.info["bus"] = bus
                            result = await work(session)
                            # ORM changes left unflushed would otherwise be lost: flushing
                            # them needs a connection, so the work gives way instead.
                            await session.flush()
                        connection.commit()
                    except BaseException as exc:
                        _roll_back(connection)
                        if isinstance(exc, QuickPathUnavailable):
                            return FALLBACK
                        raise
            except BaseException as exc:
                self._forget_refused(exc)  # once the connection is back in its pool
                raise
        self._checkpoint_soon()
        for callback in session.info["after_commit"]:
            done = callback()
            if asyncio.iscoroutine(done):
                await done
        return result

    async def read(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T | Fallback:
        """Run ``work``'s Core statements in a read transaction on a plain connection of
        its own, on the loop itself.

        For small indexed reads on SQLite's hot paths (an API key's owner): the
        read costs microseconds, the round trips through the driver's thread far
        more while the loop is busy. Returns :data:`FALLBACK` where
        :meth:`transaction` would, and when the read cannot start at once; the
        caller then reads the normal way.
        """
        engine = self._plain_engine("read")
        plain = self._plain.get("read")
        if engine is None or plain is None or plain.in_transaction:
            return FALLBACK  # none here, or a read that awaited something is still open
        with engine.connect() as connection:
            try:
                connection.exec_driver_sql("BEGIN")  # one snapshot for all the statements
                with self._quick_session(connection) as session:
                    result = await work(session)
            except (QuickPathUnavailable, OperationalError):
                return FALLBACK
            finally:
                _roll_back(connection)
        return result

    @contextlib.contextmanager
    def _quick_session(self, connection: Connection) -> Iterator[AsyncSession]:
        if self._no_connection is None:
            # What a quick session is bound to: it must never connect.
            self._no_connection = create_async_engine(
                "sqlite+aiosqlite://", async_creator=_refuse_connection
            )
        session = AsyncSession(self._no_connection)
        session.info["after_commit"] = []
        session.info["quick"] = connection
        try:
            yield session
        finally:
            # Closed as it is, without a connection: AsyncSession's own close would
            # hand the loop to other tasks while the transaction is still open.
            session.sync_session.close()

    def _checkpoint_soon(self) -> None:
        """Quick writes never checkpoint the WAL themselves (that would block the loop):
        a checkpoint runs on the driver's thread a moment later, so the WAL stays
        small and reads stay fast."""
        if self._disposed:
            return  # a write that finished during dispose(): nothing left to run it
        if self._checkpoint is None or self._checkpoint.done():
            self._checkpoint = asyncio.create_task(self._checkpoint_later())

    async def _checkpoint_later(self) -> None:
        await asyncio.sleep(self.checkpoint_delay)
        try:
            # SQLite starts the WAL over (at the next write) only once a checkpoint has
            # caught up with its end. Under steady writes a checkpoint alone never does
            # (new frames keep coming while it copies), and the WAL grew by megabytes a
            # second. So: the bulk while writers carry on, then what they added
            # meanwhile, again while they carry on, until a pass had little to copy;
            # what came during that pass is copied with this process's writers held
            # back (every hold waits then).
            copied = 0
            for _ in range(CHECKPOINT_PASSES):
                busy, frames, done = await self._wal_checkpoint()
                if busy:
                    continue  # another checkpoint is running: it copies for this one
                # What this pass found to copy (all of it if the WAL had started over).
                found = frames - copied if frames >= copied else frames
                copied = done
                if found <= CHECKPOINT_FEW_FRAMES:
                    break
            async with self._write_lock:
                await self._wal_checkpoint()
        except Exception:  # the next quick write tries again
            log.warning("WAL checkpoint failed", exc_info=True)

    async def _wal_checkpoint(self) -> tuple[int, int, int]:
        """Copy what it can of the WAL into the database file: PASSIVE, so it never
        waits for anyone. Returns SQLite's (busy, frames in the WAL when it started,
        frames copied so far); (1, -1, -1) if another checkpoint was running."""
        async with self.read_engine.connect() as connection:
            result = await connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            return cast(tuple[int, int, int], tuple(result.one()))

    def _forget_refused(self, exc: BaseException) -> None:
        """After SQLite refused a write (see :mod:`tokendesk.db.refusals`), close the
        write connection: one opened while the file was read-only stays read-only,
        and the next quick write opens it anew."""
        if refusal(exc) is None:
            return
        engine = self._plain_engines.pop("write", None)
        if engine is not None:
            engine.dispose()
        connection = self._plain.pop("write", None)
        if connection is not None:
            connection.close()

    def _plain_engine(self, kind: str) -> Engine | None:
        """SQLAlchemy's synchronous engine over the plain connection of this ``kind``."""
        engine = self._plain_engines.get(kind)
        if engine is None:
            connection = self._plain_connection(kind)
            if connection is None:
                return None
            engine = create_engine("sqlite://", creator=lambda: connection, poolclass=StaticPool)
            self._plain_engines[kind] = engine
        return engine

    def _plain_connection(self, kind: str) -> sqlite3.Connection | None:
        """The plain ``sqlite3`` connection for quick writes ("write") or reads ("read")."""
        connection = self._plain.get(kind)
        if connection is None:
            path = make_url(self.url).database
            if not self.usable or path is None:
                return None
            connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            # As the driver's connections, except: fail at once rather than wait on the
            # loop, and leave checkpoints to the driver's thread (see _checkpoint_soon).
            for pragma in (
                "journal_mode=WAL",
                "busy_timeout=0",
                "foreign_keys=ON",
                "synchronous=NORMAL",
                "wal_autocheckpoint=0",
            ):
                connection.execute(f"PRAGMA {pragma}")
            self._plain[kind] = connection
        return connection

    async def dispose(self) -> None:
        self._disposed = True
        if self._checkpoint is not None:
            self._checkpoint.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoint
            self._checkpoint = None
        for engine in self._plain_engines.values():
            engine.dispose()
        self._plain_engines.clear()
        if self._no_connection is not None:
            await self._no_connection.dispose()
            self._no_connection = None
        for connection in self._plain.values():
            connection.close()
        self._plain.clear()


def _roll_back(connection: Connection) -> None:
    """Never leave a plain connection inside a transaction, whatever failed (a COMMIT
    too): it would keep SQLite's write lock from every process, or its WAL from
    being checkpointed."""
    connection.rollback()
    driver: Any = connection.connection.driver_connection
    if driver.in_transaction:
        driver.execute("ROLLBACK")
