"""Engines, the shared declarative ``Base`` and the unit of work.

SQLite is a real deployment target: WAL, a busy timeout, and write transactions
that begin IMMEDIATE so a read-then-write transaction waits for the lock instead
of failing with "database is locked". Inside one process, writers also queue on
an asyncio lock, which is fairer and cheaper than SQLite's sleeping busy handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    CursorResult,
    DateTime,
    Engine,
    Executable,
    Integer,
    MetaData,
    String,
    any_,
    bindparam,
    create_engine,
    event,
    func,
    literal_column,
    make_url,
    select,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator

log = logging.getLogger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments INTEGER PRIMARY KEY; BigInteger keys there must render as INTEGER.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


def sqlite_timestamp(value: datetime) -> str:
    """``value`` as a UTCDateTime column holds it on SQLite: naive UTC text, exactly as
    SQLAlchemy's SQLite DATETIME writes it (so text order is time order)."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite stores naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        # One step instead of three (this method, then SQLite DATETIME's own
        # formatting): a usage batch binds a few hundred timestamps.
        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is None:
                raise ValueError("naive datetime given to a UTC column")
            return sqlite_timestamp(value)

        return process


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    return datetime.now(UTC)


AfterCommit = Callable[[], Any]
T = TypeVar("T")

# A background WAL checkpoint copies while writers carry on, at most this many passes,
# until one finds at most this many new frames (page writes) to copy.
CHECKPOINT_PASSES = 4
CHECKPOINT_FEW_FRAMES = 32


class QuickPathUnavailable(Exception):
    """Work inside :meth:`Database.quick_transaction` needed more than Core statements
    (the ORM, say): it is rolled back and the caller takes the normal path."""


async def _refuse_connection() -> Any:
    raise QuickPathUnavailable("this session runs Core statements on the quick connection only")


class Database:
    """Owns the engines and hands out transactions.

    ``transaction(write=True)`` is the one unit-of-work helper used by HTTP
    requests, the CLI and background jobs: it commits on success, rolls back on
    error, then runs the after-commit callbacks (real-time events) only once the
    data is durable. The gateway's holds are the one exception, for speed on its
    hot path: :meth:`quick_write` on SQLite, one autocommitted statement on
    PostgreSQL; neither publishes events.
    """

    def __init__(self, url: str, *, echo: bool = False, checkpoint_delay: float = 1.0) -> None:
        self.url = url
        # How long after a quick write its WAL frames are checkpointed (see _checkpoint_soon).
        self.checkpoint_delay = checkpoint_delay
        self.is_sqlite = url.startswith("sqlite")
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        if self.is_sqlite:
            self.write_engine = self._sqlite_engine(url, immediate=True, echo=echo)
            self.read_engine = self._sqlite_engine(url, immediate=False, echo=echo)
        else:
            self.write_engine = create_async_engine(
                url, echo=echo, pool_size=10, max_overflow=20, pool_pre_ping=True
            )
            self.read_engine = self.write_engine
        self._write_sessions = async_sessionmaker(self.write_engine, expire_on_commit=False)
        self._read_sessions = async_sessionmaker(self.read_engine, expire_on_commit=False)
        # Plain connections for quick writes and reads (see quick_write), by kind.
        self._plain: dict[str, sqlite3.Connection] = {}
        self._plain_engines: dict[str, Engine] = {}
        self._no_connection: AsyncEngine | None = None
        self._checkpoint: asyncio.Task[None] | None = None
        self._disposed = False

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
                try:
                    yield session
                    await session.commit()
                except BaseException:
                    await session.rollback()
                    raise
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
        if quick is not None:
            return quick
        async with self.transaction(write=write) as session:
            return await work(session)

    async def quick_write(self, work: Callable[[sqlite3.Connection], T]) -> T | None:
        """Run ``work`` in a write transaction of its own, on the event loop itself.

        For a few tiny statements on SQLite's hot paths (the gateway's holds):
        SQLite does them in microseconds, far less than handing each one to the
        driver's thread and back. ``work`` gets a plain ``sqlite3`` connection
        inside BEGIN IMMEDIATE, taken under the process's write lock, and is
        committed when it returns (rolled back if it raises). It must not block:
        it runs on the loop. Returns None, having run nothing, when there is no
        such shortcut (PostgreSQL, an in-memory database) or another process is
        writing right now; the caller then takes the normal path, which waits.
        """
        if self._write_lock is None:
            return None
        async with self._write_lock:
            connection = self._plain_connection("write")
            if connection is None:
                return None
            try:
                connection.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                return None  # locked by another process: never wait on the loop
            try:
                result = work(connection)
                connection.execute("COMMIT")
            except BaseException:
                # Never leave this connection inside a transaction: it would keep
                # SQLite's write lock from every process.
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        self._checkpoint_soon()
        return result

    async def quick_transaction(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T | None:
        """Run ``work`` in a write transaction on the quick connection, without handing
        each statement to the driver's thread.

        For a batch of Core statements on SQLite's hot paths (the gateway's
        settlements): ``work`` gets a session whose Core statements
        (:func:`run_core`) run on the quick connection, one after the other in the
        same turn of the loop, under the process's write lock, so nothing else
        interleaves while SQLite's writer is held. Anything else the session is
        asked to do (the ORM, say) raises :class:`QuickPathUnavailable`: the work
        is rolled back and None returned, as when there is no quick connection or
        another process is writing; the caller then takes the normal path. So
        ``work`` must not return None itself. Events are published after the
        commit, as :meth:`transaction` does.
        """
        if self._write_lock is None:
            return None
        async with self._write_lock:
            engine = self._plain_engine("write")
            if engine is None:
                return None
            with engine.connect() as connection:
                try:
                    connection.exec_driver_sql("BEGIN IMMEDIATE")
                except OperationalError:
                    return None  # locked by another process: never wait on the loop
                try:
                    with self._quick_session(connection) as session:
                        result = await work(session)
                        # ORM changes left unflushed would otherwise be lost: flushing
                        # them needs a connection, so the work gives way instead.
                        await session.flush()
                    connection.commit()
                except BaseException as exc:
                    _roll_back(connection)
                    if isinstance(exc, QuickPathUnavailable):
                        return None
                    raise
        self._checkpoint_soon()
        for callback in session.info["after_commit"]:
            done = callback()
            if asyncio.iscoroutine(done):
                await done
        return result

    async def quick_read(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T | None:
        """Run ``work``'s Core statements in a read transaction on a plain connection of
        its own, on the loop itself.

        For small indexed reads on SQLite's hot paths (an API key's owner): the
        read costs microseconds, the round trips through the driver's thread far
        more while the loop is busy. Returns None where :meth:`quick_transaction`
        would (so ``work`` must not return None either), and when the read cannot
        start at once; the caller then reads the normal way.
        """
        engine = self._plain_engine("read")
        plain = self._plain.get("read")
        if engine is None or plain is None or plain.in_transaction:
            return None  # none here, or a read that awaited something is still open
        with engine.connect() as connection:
            try:
                connection.exec_driver_sql("BEGIN")  # one snapshot for all the statements
                with self._quick_session(connection) as session:
                    result = await work(session)
            except (QuickPathUnavailable, OperationalError):
                return None
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
            assert self._write_lock is not None
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
            if not self.is_sqlite or not path or path == ":memory:" or path.startswith("file:"):
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
        await self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            await self.read_engine.dispose()


def _roll_back(connection: Connection) -> None:
    """Never leave a plain connection inside a transaction, whatever failed (a COMMIT
    too): it would keep SQLite's write lock from every process, or its WAL from
    being checkpointed."""
    connection.rollback()
    driver: Any = connection.connection.driver_connection
    if driver.in_transaction:
        driver.execute("ROLLBACK")


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


def after_commit(session: AsyncSession, callback: AfterCommit) -> None:
    """Run ``callback`` once the session's transaction has committed (never on rollback)."""
    session.info.setdefault("after_commit", []).append(callback)


_database: Database | None = None


def get_database() -> Database:
    if _database is None:
        raise RuntimeError("database not configured; call configure_database() first")
    return _database


def configure_database(url: str) -> Database:
    global _database
    _database = Database(url)
    return _database


def set_database(database: Database | None) -> None:
    global _database
    _database = database


def in_list(
    dialect: str, column: Any, name: str | None = "ids", *, values: Iterable[Any] | None = None
) -> ColumnElement[bool]:
    """``column`` is in a list bound as one parameter: an array on PostgreSQL, a JSON
    list read through ``json_each`` on SQLite.

    One parameter, not one per value: nothing is rendered per value, no driver
    limit on the number of parameters applies, and a statement built once serves
    every list. Without ``values`` the list is bound at execution time under
    ``name`` (see :func:`listed`); with them it is bound now.
    """
    item = String() if isinstance(column.type, String) else BigInteger()
    type_: Any = postgresql.ARRAY(item) if dialect == "postgresql" else String()
    if values is None:
        param = bindparam(name, type_=type_)
    else:
        param = bindparam(None, listed(dialect, values), type_=type_)
    if dialect == "postgresql":
        return column == any_(param)
    return column.in_(select(literal_column("value")).select_from(func.json_each(param)))


def listed(dialect: str, values: Iterable[Any]) -> Any:
    """The value of an :func:`in_list` parameter for ``values``."""
    ordered = sorted(values)
    return ordered if dialect == "postgresql" else json.dumps(ordered)


def bound_rows(dialect: str, name: str, *columns: str) -> Any:
    """A derived table ``name`` of integer ``columns``, all its rows bound at once.

    The table form of :func:`in_list`, for set-based statements that join to a
    row of values per target (``UPDATE ... FROM``): on PostgreSQL one array per
    column, unnested side by side; on SQLite one JSON list of rows read through
    ``json_each``. Bind the rows with :func:`rows_bound`.
    """
    if dialect == "postgresql":
        arrays = [
            bindparam(f"{name}_{column}", type_=postgresql.ARRAY(BigInteger()))
            for column in columns
        ]
        return func.unnest(*arrays).table_valued(*columns).render_derived(name=name)
    value: ColumnElement[Any] = literal_column("value")
    return (
        select(
            *(
                func.json_extract(value, literal_column(f"'$[{i}]'")).label(column)
                for i, column in enumerate(columns)
            )
        )
        .select_from(func.json_each(bindparam(name, type_=String())))
        # No limit, but a subquery with one is materialized rather than merged into
        # the statement: SQLite then reads these rows first and finds each target by
        # its key, instead of scanning the rows once per target an index offers.
        .limit(-1)
        .subquery(name)
    )


def rows_bound(
    dialect: str, name: str, columns: Sequence[str], rows: Iterable[Sequence[int]]
) -> dict[str, Any]:
    """The parameters of a :func:`bound_rows` table holding ``rows``."""
    listed_rows = [list(row) for row in rows]
    if dialect == "postgresql":
        return {
            f"{name}_{column}": [row[i] for row in listed_rows] for i, column in enumerate(columns)
        }
    return {name: json.dumps(listed_rows)}
