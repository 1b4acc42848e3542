"""The gateway and the event stream over real sockets: disconnects, fan-out, isolation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.factories import World
from tests.fake_upstream import FakeUpstream, RunningServer
from tests.serving import serving
from tokendesk.app import create_app
from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.events.bus import Event, InProcessBus, emit
from tokendesk.gateway.tokens import prompt_tokens, text_tokens
from tokendesk.ledger import service as ledger


@pytest.fixture
async def live(database: Database, db_url: str) -> AsyncIterator[tuple[str, Any]]:
    """tokendesk itself on a real port, serving the built-in demo model."""
    app = create_app(
        Settings(database_url=db_url, demo=True, scheduler_enabled=False),
        database=database,
    )
    async with RunningServer(app) as server:
        yield server.url, app


async def next_event(lines: AsyncIterator[str]) -> tuple[str, dict[str, Any]]:
    kind = ""
    async for line in lines:
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: ") and kind:
            return kind, json.loads(line[6:])
    raise AssertionError("stream ended")


class TestClientDisconnect:
    async def test_member_who_stops_a_stream_pays_only_for_what_was_sent(
        self, live: tuple[str, Any], world: World, database: Database
    ) -> None:
        url, app = live
        messages = [{"role": "user", "content": "Tell me something long"}]
        received = ""
        async with (
            httpx.AsyncClient(base_url=url, timeout=10) as http,
            http.stream(
                "POST",
                "/v1/chat/completions",
                json={"model": "demo", "messages": messages, "stream": True},
                headers=world.alice.headers,
            ) as response,
        ):
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    received += json.loads(line[6:])["choices"][0]["delta"].get("content", "")
                if len(received.split()) >= 3:
                    break
        # The server notices the closed socket, stops, and settles what it sent.
        gateway = app.state.runtime.gateway
        for _ in range(200):
            await gateway.settler.drain()
            async with database.transaction() as s:
                balance = await ledger.get_balance(s, user_id=world.alice.id)
            if balance.reserved == 0:
                break
            await asyncio.sleep(0.02)
        assert balance.reserved == 0
        full_reply_cost = prompt_tokens(messages) + 80
        assert prompt_tokens(messages) + text_tokens(received) <= balance.used < full_reply_cost


class TestEventStream:
    async def test_members_receive_only_their_own_events(
        self, live: tuple[str, Any], world: World
    ) -> None:
        url, _ = live
        async with (
            httpx.AsyncClient(base_url=url, timeout=10) as http,
            http.stream("GET", "/events", headers=world.alice.headers) as alice_stream,
            http.stream("GET", "/events", headers=world.bob.headers) as bob_stream,
        ):
            alice_lines = alice_stream.aiter_lines()
            bob_lines = bob_stream.aiter_lines()
            assert (await next_event(alice_lines))[0] == "snapshot"
            kind, snap = await next_event(bob_lines)
            assert kind == "snapshot" and snap["user_id"] == world.bob.id
            chat = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
            r = await http.post("/v1/chat/completions", json=chat, headers=world.bob.headers)
            assert r.status_code == 200
            kind, data = await asyncio.wait_for(next_event(bob_lines), 5)
            assert (kind, data["user_id"]) == ("balance.changed", world.bob.id)
            assert data["used"] > 0
            # Alice's next event is her own: bob's never reached her stream.
            r = await http.post("/v1/chat/completions", json=chat, headers=world.alice.headers)
            kind, data = await asyncio.wait_for(next_event(alice_lines), 5)
            assert (kind, data["user_id"]) == ("balance.changed", world.alice.id)

    async def test_stream_needs_credentials(self, live: tuple[str, Any], world: World) -> None:
        url, _ = live
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            r = await http.get("/events")
            assert r.status_code == 401


class TestPublishAfterCommit:
    async def test_rolled_back_transaction_publishes_nothing(
        self, database: Database, bus: InProcessBus
    ) -> None:
        async with bus.subscribe() as queue:
            with pytest.raises(RuntimeError):
                async with database.transaction() as s:
                    emit(s, Event(type="balance.changed", data={}, user_id=1))
                    raise RuntimeError("boom")
            async with database.transaction() as s:
                emit(s, Event(type="balance.changed", data={"n": 2}, user_id=1))
                assert queue.empty(), "published before commit"
            assert (await asyncio.wait_for(queue.get(), 1)).data == {"n": 2}
            assert queue.empty()


class TestConcurrentCalls:
    async def test_concurrent_calls_never_hold_more_than_the_balance(
        self, database: Database, db_url: str, world: World
    ) -> None:
        # Slow enough that every hold is placed while the first calls are still in flight.
        fake = FakeUpstream(slow_seconds=1.5)
        async with RunningServer(fake) as upstream:
            models = json.dumps([{"name": "slow", "base_url": f"{upstream.url}/v1"}])
            app = create_app(
                Settings(
                    database_url=db_url,
                    demo=True,
                    scheduler_enabled=False,
                    models=models,
                    upstream_timeout_seconds=10,
                ),
                database=database,
            )
            transport = httpx.ASGITransport(app=app)
            async with (
                serving(app),
                httpx.AsyncClient(transport=transport, base_url="http://t") as http,
            ):
                # nora has 5,000 tokens; each call holds about 1,010, so only 4 fit at once.
                body = {
                    "model": "slow",
                    "messages": [{"role": "user", "content": "x"}],
                    "max_tokens": 1000,
                }
                responses = await asyncio.gather(
                    *(
                        http.post("/v1/chat/completions", json=body, headers=world.nora.headers)
                        for _ in range(20)
                    )
                )
        codes = sorted(r.status_code for r in responses)
        assert codes.count(200) == 4 and codes.count(429) == 16, codes
        async with database.transaction() as s:
            balance = await ledger.get_balance(s, user_id=world.nora.id)
        assert (balance.used, balance.reserved) == (4 * 24, 0)
