"""A stream in progress (an event stream, a streamed chat reply) holds no database
connection, so other members' writes carry on while it is open."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.factories import World
from tests.fake_upstream import RunningServer
from tokendesk.app import create_app
from tokendesk.config import Settings
from tokendesk.db import Database

STEP_SECONDS = 10.0


@pytest.fixture
async def live(database: Database, db_url: str) -> AsyncIterator[tuple[str, Any]]:
    app = create_app(
        Settings(database_url=db_url, demo=True, scheduler_enabled=False),
        database=database,
    )
    async with RunningServer(app) as server:
        yield server.url, app


def connections_in_use(database: Database) -> int:
    """Connections out of the pool that every request's session comes from (on SQLite
    the read engine also serves a WAL checkpoint soon after a hold, in the background)."""
    return int(database.write_engine.pool.checkedout())  # type: ignore[attr-defined]


async def none_in_use(database: Database) -> None:
    """Until no connection is out of the pool: an event stream's opening stamps its
    key's "last used" beside the stream (a write, which must not hold up the snapshot),
    and that returns its connection as soon as it is written."""
    # The pool tells nobody when a connection comes back: look, a bounded number of times.
    for _ in range(int(STEP_SECONDS / 0.01)):
        if not connections_in_use(database):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{connections_in_use(database)} connections still in use")


async def first_data(lines: AsyncIterator[str]) -> dict[str, Any]:
    async for line in lines:
        if line.startswith("data: "):
            data: dict[str, Any] = json.loads(line[6:])
            return data
    raise AssertionError("the stream ended before its first data")


async def a_write_goes_through(http: httpx.AsyncClient, world: World) -> None:
    response = await asyncio.wait_for(
        http.post("/api/v1/token-requests", json={"amount": 1_000}, headers=world.bob.headers),
        STEP_SECONDS,
    )
    assert response.status_code == 201, response.text


class TestAnOpenStream:
    async def test_event_stream_holds_no_connection_once_its_snapshot_is_out(
        self, live: tuple[str, Any], world: World, database: Database
    ) -> None:
        url, _ = live
        async with (
            httpx.AsyncClient(base_url=url, timeout=STEP_SECONDS) as http,
            http.stream("GET", "/events", headers=world.alice.headers) as stream,
        ):
            lines = stream.aiter_lines()
            await asyncio.wait_for(first_data(lines), STEP_SECONDS)
            await none_in_use(database)
            await a_write_goes_through(http, world)

    async def test_streamed_chat_reply_holds_no_connection_while_it_streams(
        self, live: tuple[str, Any], world: World, database: Database
    ) -> None:
        url, app = live
        body = {
            "model": "demo",
            "messages": [{"role": "user", "content": "Tell me something long"}],
            "stream": True,
        }
        async with (
            httpx.AsyncClient(base_url=url, timeout=STEP_SECONDS) as http,
            http.stream(
                "POST", "/v1/chat/completions", json=body, headers=world.alice.headers
            ) as stream,
        ):
            lines = stream.aiter_lines()
            await asyncio.wait_for(first_data(lines), STEP_SECONDS)
            assert app.state.runtime.gateway.calls.open_for(world.alice.id) == 1  # still streaming
            assert connections_in_use(database) == 0
            await a_write_goes_through(http, world)
