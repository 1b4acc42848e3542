"""Anthropic's Messages API through tokendesk, as the official ``anthropic`` SDK sees it.

A live tokendesk before the fake upstream's Anthropic side: the fast model reports 11
input and 13 output tokens (24 debited), and counts 42 tokens for count_tokens.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anthropic
import pytest

from tests.factories import Person, World
from tests.fake_upstream import COUNTED, REPLY, FakeUpstream, RunningServer
from tests.gateway.test_budget import leave
from tests.ledger_support import balance_of
from tokendesk.app import create_app
from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.gateway.tokens import anthropic_prompt_tokens, text_tokens

QUESTION = [{"role": "user", "content": "Say hello"}]
UPSTREAM_KEY = "sk-ant-upstream-secret"


def anthropic_model(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "api": "anthropic",
        "base_url": url,
        "api_key": UPSTREAM_KEY,
        "max_output_tokens": 64_000,
        **extra,
    }


@dataclass
class Live:
    url: str
    upstream: FakeUpstream
    app: Any

    async def settled(self) -> None:
        await self.app.state.runtime.gateway.settler.drain()

    def client(self, person: Person, *, bearer: bool = False) -> anthropic.AsyncAnthropic:
        """Claude Code's two ways: an API key (x-api-key) or an auth token (Bearer)."""
        if bearer:
            return anthropic.AsyncAnthropic(
                base_url=self.url, api_key=None, auth_token=person.key, max_retries=0
            )
        return anthropic.AsyncAnthropic(base_url=self.url, api_key=person.key, max_retries=0)

    async def left(self, database: Database, person: Person) -> tuple[int, int]:
        """(used, reserved) once every settlement is written."""
        await self.settled()
        balance = await balance_of(database, person.id)
        return balance.used, balance.reserved


@pytest.fixture
async def live(
    database: Database, db_url: str, upstream: tuple[FakeUpstream, str]
) -> AsyncIterator[Live]:
    fake, url = upstream
    models = [
        anthropic_model("claude", url, upstream_model="fast"),
        *(
            anthropic_model(f"claude-{kind}", url, upstream_model=kind)
            for kind in ("nousage", "error", "drop", "refuse")
        ),
        anthropic_model(
            "claude-priced",
            url,
            upstream_model="fast",
            weights={"input": 1.0, "output": 4.0, "cached_input": 0.25},
        ),
        anthropic_model("claude-small", url, upstream_model="fast", max_output_tokens=4096),
        {"name": "gpt", "base_url": f"{url}/v1"},
    ]
    app = create_app(
        Settings(
            database_url=db_url, demo=True, scheduler_enabled=False, models=json.dumps(models)
        ),
        database=database,
    )
    async with RunningServer(app) as server:
        yield Live(server.url, fake, app)


@pytest.mark.parametrize("bearer", [False, True], ids=["x-api-key", "auth-token"])
class TestMessages:
    async def test_a_reply_is_debited_exactly_what_the_upstream_reported(
        self, live: Live, world: World, database: Database, bearer: bool
    ) -> None:
        message = await live.client(world.alice, bearer=bearer).messages.create(
            model="claude", max_tokens=2000, messages=QUESTION
        )
        assert message.content[0].type == "text" and message.content[0].text == REPLY
        assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 13)
        assert await live.left(database, world.alice) == (24, 0)

    async def test_the_upstream_gets_its_own_key_name_budget_and_version(
        self, live: Live, world: World, bearer: bool
    ) -> None:
        await live.client(world.alice, bearer=bearer).messages.create(
            model="claude",
            max_tokens=2000,
            messages=QUESTION,
            extra_headers={
                "anthropic-version": "2023-06-01",
                "anthropic-beta": "interleaved-thinking-2025-05-14",
            },
        )
        sent = live.upstream.anthropic_headers[0]
        # The member's tokendesk key never goes upstream; the configured key does.
        assert sent["x-api-key"] == UPSTREAM_KEY
        assert "authorization" not in sent
        assert sent["anthropic-version"] == "2023-06-01"
        assert sent["anthropic-beta"] == "interleaved-thinking-2025-05-14"
        assert live.upstream.bodies[0]["model"] == "fast"
        assert live.upstream.bodies[0]["max_tokens"] == 2000

    async def test_a_stream_is_debited_exactly_and_holds_nothing_after(
        self, live: Live, world: World, database: Database, bearer: bool
    ) -> None:
        client = live.client(world.alice, bearer=bearer)
        async with client.messages.stream(
            model="claude", max_tokens=2000, messages=QUESTION
        ) as stream:
            text = await stream.get_final_text()
            final = await stream.get_final_message()
        assert text == REPLY
        assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 13)
        assert await live.left(database, world.alice) == (24, 0)

    async def test_counting_tokens_is_passed_through_and_free(
        self, live: Live, world: World, database: Database, bearer: bool
    ) -> None:
        counted = await live.client(world.alice, bearer=bearer).messages.count_tokens(
            model="claude", messages=QUESTION
        )
        assert counted.input_tokens == COUNTED
        assert live.upstream.anthropic_headers[0]["x-api-key"] == UPSTREAM_KEY
        assert live.upstream.bodies[0]["model"] == "fast"
        assert await live.left(database, world.alice) == (0, 0)


class TestUsageKinds:
    async def test_cache_reads_and_writes_are_billed_input_and_reads_cached(
        self, live: Live, world: World, database: Database
    ) -> None:
        live.upstream.anthropic_usage = {
            "input_tokens": 5,
            "output_tokens": 13,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 20,
        }
        await live.client(world.alice).messages.create(
            model="claude-priced", max_tokens=500, messages=QUESTION
        )
        # 25 uncached input at 1, 100 cache reads at 0.25, 13 output at 4.
        assert await live.left(database, world.alice) == (25 + 25 + 52, 0)

    async def test_thinking_text_and_tool_input_all_count_when_usage_is_missing(
        self, live: Live, world: World, database: Database
    ) -> None:
        blocks = [
            ("thinking", "Let me think about it " * 4),
            ("text", "Hello there"),
            ("tool_use", '{"q": "weather in Paris"}'),
        ]
        live.upstream.anthropic_blocks = blocks
        # The stream helper needs usage; the raw events do not.
        stream = await live.client(world.alice).messages.create(
            model="claude-nousage", max_tokens=2000, messages=QUESTION, stream=True
        )
        kinds = [event.type async for event in stream]
        assert kinds.count("content_block_delta") > 3
        prompt = anthropic_prompt_tokens({"messages": QUESTION})
        delivered = "".join(text for _, text in blocks)
        assert await live.left(database, world.alice) == (prompt + text_tokens(delivered), 0)


class TestFailures:
    async def test_an_upstream_refusal_reaches_the_client_and_releases_the_hold(
        self, live: Live, world: World, database: Database
    ) -> None:
        with pytest.raises(anthropic.OverloadedError):
            await live.client(world.alice).messages.create(
                model="claude-error", max_tokens=2000, messages=QUESTION
            )
        assert await live.left(database, world.alice) == (0, 0)

    async def test_an_error_event_before_any_word_releases_the_hold(
        self, live: Live, world: World, database: Database
    ) -> None:
        client = live.client(world.alice)
        with pytest.raises(anthropic.APIStatusError):
            async with client.messages.stream(
                model="claude-refuse", max_tokens=2000, messages=QUESTION
            ) as stream:
                async for _ in stream:
                    pass
        assert await live.left(database, world.alice) == (0, 0)

    async def test_a_cut_stream_charges_the_input_and_what_was_delivered(
        self, live: Live, world: World, database: Database
    ) -> None:
        client = live.client(world.alice)
        with pytest.raises(anthropic.APIStatusError) as raised:
            async with client.messages.stream(
                model="claude-drop", max_tokens=2000, messages=QUESTION
            ) as stream:
                async for _ in stream:
                    pass
        assert "upstream failed mid-stream" in str(raised.value)
        # Two deltas of eight characters arrived: the reported input, and four tokens.
        assert await live.left(database, world.alice) == (11 + text_tokens(REPLY[:16]), 0)


class TestRefusals:
    async def test_running_out_is_a_rate_limit_error_with_the_request_link(
        self, live: Live, world: World, database: Database
    ) -> None:
        await leave(database, world.nora.id, 10)
        with pytest.raises(anthropic.RateLimitError) as raised:
            await live.client(world.nora).messages.create(
                model="claude", max_tokens=2000, messages=QUESTION
            )
        assert "Ask for more tokens here:" in raised.value.message
        assert raised.value.response.headers["x-should-retry"] == "false"
        assert raised.value.body["error"]["type"] == "rate_limit_error"
        assert live.upstream.bodies == []

    async def test_a_member_with_a_little_left_gets_what_it_covers(
        self, live: Live, world: World, database: Database
    ) -> None:
        await leave(database, world.nora.id, 500)
        await live.client(world.nora).messages.create(
            model="claude", max_tokens=2000, messages=QUESTION
        )
        prompt = anthropic_prompt_tokens({"messages": QUESTION})
        assert live.upstream.bodies[0]["max_tokens"] == 500 - prompt

    async def test_an_unknown_key_is_an_authentication_error(
        self, live: Live, world: World
    ) -> None:
        stranger = Person(0, "x@example.com", "X", "td_not_a_real_key")
        for bearer in (False, True):
            with pytest.raises(anthropic.AuthenticationError):
                await live.client(stranger, bearer=bearer).messages.create(
                    model="claude", max_tokens=100, messages=QUESTION
                )
        assert live.upstream.bodies == []

    async def test_an_unknown_model_is_not_found(self, live: Live, world: World) -> None:
        with pytest.raises(anthropic.NotFoundError) as raised:
            await live.client(world.alice).messages.create(
                model="claude-9", max_tokens=100, messages=QUESTION
            )
        assert "GET /v1/models" in raised.value.message

    async def test_a_model_that_does_not_speak_messages_is_a_bad_request(
        self, live: Live, world: World
    ) -> None:
        with pytest.raises(anthropic.BadRequestError) as raised:
            await live.client(world.alice).messages.create(
                model="gpt", max_tokens=100, messages=QUESTION
            )
        assert "does not speak the messages API" in raised.value.message

    async def test_a_budget_beyond_the_model_is_a_bad_request_naming_max_tokens(
        self, live: Live, world: World, database: Database
    ) -> None:
        with pytest.raises(anthropic.BadRequestError) as raised:
            await live.client(world.alice).messages.create(
                model="claude-small", max_tokens=4097, messages=QUESTION
            )
        assert "max_tokens" in raised.value.message
        assert await live.left(database, world.alice) == (0, 0)


@pytest.fixture
async def demo_url(database: Database, db_url: str) -> AsyncIterator[tuple[str, Any]]:
    app = create_app(
        Settings(database_url=db_url, demo=True, scheduler_enabled=False), database=database
    )
    async with RunningServer(app) as server:
        yield server.url, app


class TestDemoModel:
    async def test_a_reply_and_a_stream_are_debited_what_they_report(
        self, demo_url: tuple[str, Any], world: World, database: Database
    ) -> None:
        url, app = demo_url
        client = anthropic.AsyncAnthropic(base_url=url, api_key=world.alice.key, max_retries=0)
        whole = await client.messages.create(model="demo", max_tokens=500, messages=QUESTION)
        async with client.messages.stream(
            model="demo", max_tokens=500, messages=QUESTION
        ) as stream:
            events = [event.type async for event in stream]
            streamed = await stream.get_final_message()
        assert streamed.content[0].type == "text" and whole.content[0].type == "text"
        assert streamed.content[0].text == whole.content[0].text
        assert streamed.usage.output_tokens == whole.usage.output_tokens
        assert streamed.stop_reason == whole.stop_reason == "end_turn"
        assert events[0] == "message_start" and events[-1] == "message_stop"
        counted = await client.messages.count_tokens(model="demo", messages=QUESTION)
        assert counted.input_tokens == whole.usage.input_tokens
        await app.state.runtime.gateway.settler.drain()
        balance = await balance_of(database, world.alice.id)
        each = whole.usage.input_tokens + whole.usage.output_tokens
        assert (balance.used, balance.reserved) == (2 * each, 0)

    async def test_a_small_budget_stops_the_reply_at_max_tokens(
        self, demo_url: tuple[str, Any], world: World
    ) -> None:
        client = anthropic.AsyncAnthropic(
            base_url=demo_url[0], api_key=world.alice.key, max_retries=0
        )
        message = await client.messages.create(model="demo", max_tokens=5, messages=QUESTION)
        assert message.stop_reason == "max_tokens"
        assert message.usage.output_tokens <= 5


async def test_the_sdk_lists_the_models_with_an_api_key(live: Live, world: World) -> None:
    page = await live.client(world.alice).models.list()
    ids = [model.id async for model in page]
    assert ids[0] == "claude" and "gpt" in ids
