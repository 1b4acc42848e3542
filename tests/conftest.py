"""Shared fixtures: every test runs on SQLite, and on PostgreSQL when it is reachable.

Set TOKENDESK_TEST_DATABASE_URL to a PostgreSQL URL to add that backend; with
TOKENDESK_REQUIRE_POSTGRES=1 (as in CI) an unreachable server fails the run
instead of skipping.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

import tokendesk.models as models
from tests.factories import World, make_world
from tests.hashing import CheapHasher
from tests.serving import serving
from tokendesk.accounts import security
from tokendesk.app import create_app
from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.events.bus import InProcessBus
from tokendesk.migrations.runner import upgrade

security._hasher = CheapHasher()

PG_URL = os.environ.get("TOKENDESK_TEST_DATABASE_URL", "")
# Lines a test adds for the end of the run's report (the API fuzzing's figures, say).
SUMMARY = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[SUMMARY] = []


def pytest_sessionfinish(session: pytest.Session) -> None:
    # A worker of a run over several processes (pytest -n) hands its lines to the
    # controlling process, which prints them.
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["summary"] = session.config.stash.get(SUMMARY, [])


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    node.config.stash[SUMMARY].extend(getattr(node, "workeroutput", {}).get("summary", []))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    for line in config.stash.get(SUMMARY, []):
        terminalreporter.write_line(line)


REQUIRE_PG = os.environ.get("TOKENDESK_REQUIRE_POSTGRES") == "1"


def _postgres_reachable(url: str) -> str | None:
    import asyncpg

    dsn = url.replace("postgresql+asyncpg://", "postgresql://")

    async def probe() -> None:
        conn = await asyncpg.connect(dsn, timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _worker_database(url: str) -> str:
    """The PostgreSQL database of this test process: the configured one, or with
    several processes (pytest -n) one of its own beside it, created when missing."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return url
    import asyncpg

    prefix, _, name = url.rpartition("/")
    name, mark, query = name.partition("?")
    own = f"{name}_{worker}"

    async def create() -> None:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", own)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{own}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return f"{prefix}/{own}{mark}{query}"


def _reset_postgres(url: str) -> None:
    import asyncpg

    async def reset() -> None:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        finally:
            await conn.close()

    asyncio.run(reset())


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("db") / "tokendesk.db"
        url = f"sqlite+aiosqlite:///{path}"
    else:
        if not PG_URL:
            if REQUIRE_PG:
                pytest.fail("TOKENDESK_REQUIRE_POSTGRES=1 but TOKENDESK_TEST_DATABASE_URL is unset")
            pytest.skip("PostgreSQL tests skipped: TOKENDESK_TEST_DATABASE_URL is not set")
        problem = _postgres_reachable(PG_URL)
        if problem:
            if REQUIRE_PG:
                pytest.fail(f"PostgreSQL at TOKENDESK_TEST_DATABASE_URL unreachable: {problem}")
            pytest.skip(f"PostgreSQL unreachable ({problem})")
        url = _worker_database(PG_URL)
        _reset_postgres(url)
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def backend(db_url: str) -> str:
    return "sqlite" if db_url.startswith("sqlite") else "postgres"


@pytest.fixture
def sqlite_only(backend: str) -> None:
    """For tests of SQLite's own paths: skipped on PostgreSQL."""
    if backend != "sqlite":
        pytest.skip("SQLite only")


@pytest.fixture
def postgres_only(backend: str) -> None:
    """For tests of what only PostgreSQL has (row locks between connections, say):
    skipped on SQLite."""
    if backend != "postgres":
        pytest.skip("PostgreSQL only")


@pytest.fixture(scope="session")
async def _session_database(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    yield database
    await database.dispose()


async def wipe(database: Database) -> None:
    """Empty every table (the schema stays)."""
    tables = [t.name for t in reversed(models.Base.metadata.sorted_tables)]
    async with database.transaction() as session:
        if database.is_sqlite:
            for name in tables:
                await session.execute(text(f"DELETE FROM {name}"))
        else:
            await session.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))


@pytest.fixture
def bus() -> InProcessBus:
    """The test's event bus: what its database's transactions publish on."""
    return InProcessBus()


@pytest.fixture
async def database(_session_database: Database, bus: InProcessBus) -> Database:
    """A clean, migrated database for one test, publishing on the test's bus; apps
    built with ``create_app(settings, database=database)`` use both."""
    await wipe(_session_database)
    _session_database.bus = bus
    return _session_database


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(
        database_url=db_url, demo=True, scheduler_enabled=False, notify_worker_enabled=False
    )


@pytest.fixture
async def app(database: Database, settings: Settings) -> AsyncIterator[FastAPI]:
    """The application over the test's database, its runtime built (see ``serving``)."""
    app = create_app(settings, database=database)
    async with serving(app):
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@pytest.fixture
async def world(database: Database) -> World:
    """One organization with two teams, an admin, a team owner and members (see factories)."""
    return await make_world(database)
