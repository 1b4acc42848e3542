"""At most TOKENDESK_EVENT_STREAMS_PER_USER open event streams per user."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from tests.events.support import served
from tests.factories import Person, World
from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.limits import PerUserLimit

MOST_STREAMS = 2
STEP_SECONDS = 10.0


@pytest.fixture
async def live(database: Database, db_url: str) -> AsyncIterator[tuple[str, Any]]:
    async with served(database, db_url, event_streams_per_user=MOST_STREAMS) as live:
        yield live


@dataclass
class Stream:
    response: httpx.Response
    # Kept: a line reader dropped unfinished closes its stream.
    lines: AsyncIterator[str]


async def opened(http: httpx.AsyncClient, stack: AsyncExitStack, person: Person) -> Stream:
    """An event stream that has delivered its snapshot (or a refusal)."""
    response = await stack.enter_async_context(
        http.stream("GET", "/events", headers=person.headers)
    )
    stream = Stream(response, response.aiter_lines())
    if response.status_code == 200:
        await asyncio.wait_for(snapshot(stream.lines), STEP_SECONDS)
    return stream


async def snapshot(lines: AsyncIterator[str]) -> dict[str, Any]:
    async for line in lines:
        if line.startswith("data: "):
            data: dict[str, Any] = json.loads(line[6:])
            return data
    raise AssertionError("the stream ended before its snapshot")


class TestEventStreamsPerUser:
    async def test_one_more_stream_than_allowed_is_refused_until_one_closes(
        self, live: tuple[str, Any], world: World
    ) -> None:
        url, app = live
        streams: PerUserLimit = app.state.runtime.event_streams
        async with (
            httpx.AsyncClient(base_url=url, timeout=STEP_SECONDS) as http,
            AsyncExitStack() as stack,
        ):
            first = AsyncExitStack()
            kept = [await opened(http, first, world.alice), await opened(http, stack, world.alice)]

            refused = (await opened(http, stack, world.alice)).response
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "2"
            await refused.aread()
            assert refused.json() == {
                "detail": "too many open event streams: at most 2 per user; "
                "close another tokendesk tab and try again"
            }
            # Another member's streams are their own.
            kept.append(await opened(http, stack, world.bob))
            assert kept[-1].response.status_code == 200

            await first.aclose()
            # The server lets the place go once it notices the closed connection.
            for _ in range(500):
                if streams.open_for(world.alice.id) < MOST_STREAMS:
                    break
                await asyncio.sleep(0.01)
            assert (await opened(http, stack, world.alice)).response.status_code == 200

    def test_a_limit_of_nothing_is_refused(self) -> None:
        with pytest.raises(ValidationError, match="event_streams_per_user"):
            Settings(event_streams_per_user=0)
