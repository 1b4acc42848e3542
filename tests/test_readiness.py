"""``/readyz``: ready only when the database answers at the head and the event bus listens."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.serving import serving
from tests.test_migrations import scratch_url  # noqa: F401  (a database to migrate step by step)
from tokendesk.app import create_app
from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.events.bus import InProcessBus
from tokendesk.health.readiness import CHECK_SECONDS
from tokendesk.migrations.runner import upgrade_async


async def readyz(app: FastAPI) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        return await http.get("/readyz")


Probe = Callable[[str], Awaitable[httpx.Response]]


@pytest.fixture
async def over(settings: Settings) -> AsyncIterator[Probe]:
    """Probe an app over a database of the test's choosing, its bus in-process."""
    databases: list[Database] = []

    async def probe(url: str) -> httpx.Response:
        database = Database(url, bus=InProcessBus())
        databases.append(database)
        app = create_app(settings, database=database)
        async with serving(app):
            return await readyz(app)

    yield probe
    for database in databases:
        await database.dispose()


def assert_not_ready(response: httpx.Response, failing: list[str]) -> None:
    assert response.status_code == 503
    assert response.json()["status"] == "not ready"
    assert response.json()["failing"] == failing
    assert int(response.headers["retry-after"]) > 0


async def test_a_migrated_database_and_its_bus_are_ready(
    client: httpx.AsyncClient, database: Database
) -> None:
    response = await client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "schema": "ok", "events": "ok"},
        "failing": [],
    }


async def test_a_schema_behind_the_head_is_not_ready(over: Probe, scratch_url: str) -> None:  # noqa: F811
    await upgrade_async(scratch_url, "0006")

    response = await over(scratch_url)

    assert_not_ready(response, ["schema"])
    assert response.json()["checks"]["schema"].startswith("at 0006, head is ")


@pytest.fixture
def unreachable_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database nobody can open: a port nothing listens on, a file in a folder that is not."""
    if backend == "postgres":
        yield "postgresql+asyncpg://postgres@127.0.0.1:1/tokendesk"
        return
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        yield f"sqlite+aiosqlite:///{locked / 'missing' / 'tokendesk.db'}"
    finally:
        locked.chmod(0o755)


async def test_an_unreachable_database_is_not_ready_within_the_bound(
    over: Probe, unreachable_url: str
) -> None:
    started = time.monotonic()
    response = await over(unreachable_url)

    assert time.monotonic() - started < CHECK_SECONDS + 1
    assert_not_ready(response, ["database"])
    assert response.json()["checks"]["schema"].startswith("not checked")


async def test_a_database_that_never_answers_is_not_ready_within_the_bound(
    over: Probe, postgres_only: None
) -> None:
    held: list[asyncio.StreamWriter] = []

    async def accept_and_hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept_and_hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        response = await over(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/tokendesk")
        elapsed = time.monotonic() - started
    finally:
        for writer in held:
            writer.close()
        server.close()

    assert CHECK_SECONDS - 0.5 < elapsed < CHECK_SECONDS + 1
    assert_not_ready(response, ["database"])


async def test_a_stopped_event_listener_is_not_ready(
    db_url: str, database: Database, postgres_only: None
) -> None:
    settings = Settings(
        database_url=db_url, event_bus="postgres", demo=True, scheduler_enabled=False
    )
    app = create_app(settings)
    async with serving(app) as runtime:
        assert (await readyz(app)).status_code == 200

        await runtime.bus.stop()
        response = await readyz(app)

    assert_not_ready(response, ["events"])
    assert response.json()["checks"]["events"] == "not listening"
