"""At most TOKENDESK_GATEWAY_CALLS_PER_USER calls per user at once, streamed replies included."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from tests.factories import Person, World
from tests.fake_upstream import RunningServer
from tokendesk.app import create_app
from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.gateway.routes import Gateway

MOST_CALLS = 2
STEP_SECONDS = 10.0


class HeldStreams:
    """An upstream whose streamed replies stop after their first chunk until released."""

    def __init__(self) -> None:
        self.started: asyncio.Queue[None] = asyncio.Queue()
        self.release = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        while (await receive()).get("more_body"):
            pass
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        await send({"type": "http.response.body", "body": _chunk("Hello"), "more_body": True})
        self.started.put_nowait(None)
        await self.release.wait()
        await send({"type": "http.response.body", "body": _chunk(" there"), "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


def _chunk(text: str) -> bytes:
    chunk = {"object": "chat.completion.chunk", "choices": [{"delta": {"content": text}}]}
    return f"data: {json.dumps(chunk)}\n\n".encode()


@dataclass
class Live:
    url: str
    upstream: HeldStreams
    gateway: Gateway


@pytest.fixture
async def live(database: Database, db_url: str) -> AsyncIterator[Live]:
    upstream = HeldStreams()
    async with RunningServer(upstream) as up:
        models = [{"name": "held", "base_url": f"{up.url}/v1"}]
        app = create_app(
            Settings(
                database_url=db_url,
                demo=True,
                scheduler_enabled=False,
                models=json.dumps(models),
                gateway_calls_per_user=MOST_CALLS,
            ),
            database=database,
        )
        async with RunningServer(app) as server:
            yield Live(server.url, upstream, app.state.runtime.gateway)
            upstream.release.set()


def call(person: Person) -> dict[str, Any]:
    return {
        "json": {
            "model": "held",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 10,
            "stream": True,
        },
        "headers": person.headers,
    }


async def opened(http: httpx.AsyncClient, person: Person) -> httpx.Response:
    """A streamed call whose reply has begun (its headers are in)."""
    request = http.build_request("POST", "/v1/chat/completions", **call(person))
    return await http.send(request, stream=True)


async def to_the_end(lines: AsyncIterator[str]) -> None:
    async for _ in lines:
        pass


async def first_chunk(lines: AsyncIterator[str]) -> None:
    async for line in lines:
        if line.startswith("data: "):
            return
    raise AssertionError("the stream ended before its first chunk")


class TestCallsPerUser:
    async def test_one_more_streamed_call_than_allowed_waits_its_turn(
        self, live: Live, world: World
    ) -> None:
        async with httpx.AsyncClient(base_url=live.url, timeout=STEP_SECONDS) as http:
            streams = [await opened(http, p) for p in (world.alice, world.alice)]
            lines = [response.aiter_lines() for response in streams]
            for response, read in zip(streams, lines, strict=True):
                assert response.status_code == 200
                await asyncio.wait_for(first_chunk(read), STEP_SECONDS)

            refused = await http.post("/v1/chat/completions", **call(world.alice))
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"] == {
                "message": "too many calls at once: at most 2 gateway calls per user run at "
                "the same time; try again when one has finished",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
            # Another member is not held back by the first one's calls.
            other = await opened(http, world.bob)
            assert other.status_code == 200

            live.upstream.release.set()
            for read in [*lines, other.aiter_lines()]:
                await asyncio.wait_for(to_the_end(read), STEP_SECONDS)
            for response in [*streams, other]:
                await response.aclose()
            # The server gives a place back just after its reply's last byte.
            for _ in range(500):
                if live.gateway.calls.open_for(world.alice.id) == 0:
                    break
                await asyncio.sleep(0.01)
            assert live.gateway.calls.open_for(world.alice.id) == 0
            again = await http.post("/v1/chat/completions", **call(world.alice))
        assert again.status_code == 200, again.text

    async def test_a_refused_call_holds_no_tokens(self, live: Live, world: World) -> None:
        async with httpx.AsyncClient(base_url=live.url, timeout=STEP_SECONDS) as http:
            streams = [await opened(http, p) for p in (world.alice, world.alice)]
            for _ in streams:
                await asyncio.wait_for(live.upstream.started.get(), STEP_SECONDS)
            me = await http.get("/api/v1/me", headers=world.alice.headers)
            reserved = me.json()["balance"]["reserved"]
            refused = await http.post("/v1/chat/completions", **call(world.alice))
            assert refused.status_code == 429
            after = await http.get("/api/v1/me", headers=world.alice.headers)
            assert after.json()["balance"]["reserved"] == reserved
            live.upstream.release.set()
            for response in streams:
                await response.aclose()

    def test_a_limit_of_nothing_is_refused(self) -> None:
        with pytest.raises(ValidationError, match="gateway_calls_per_user"):
            Settings(gateway_calls_per_user=0)
