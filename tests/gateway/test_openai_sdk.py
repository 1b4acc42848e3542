"""The gateway's budget rules as a client sees them through the official ``openai`` SDK."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from tests.factories import Person, World
from tests.fake_upstream import FakeUpstream, RunningServer
from tests.gateway.test_budget import leave
from tests.ledger_support import balance_of
from tokendesk.app import create_app
from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.gateway.tokens import prompt_tokens
from tokendesk.metering.service import UsageInput, record_usage

QUESTION = [{"role": "user", "content": "Say hello"}]


@dataclass
class Live:
    url: str
    upstream: FakeUpstream
    app: Any

    async def settled(self) -> None:
        await self.app.state.runtime.gateway.settler.drain()

    def client(self, person: Person) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=person.key, max_retries=0)


@pytest.fixture
async def live(
    database: Database, db_url: str, upstream: tuple[FakeUpstream, str]
) -> AsyncIterator[Live]:
    fake, upstream_url = upstream
    models = [
        {"name": "fast", "base_url": f"{upstream_url}/v1", "apis": ["chat", "embeddings"]},
        {
            "name": "single",
            "base_url": f"{upstream_url}/v1",
            "upstream_model": "fast",
            "allow_n": False,
        },
    ]
    app = create_app(
        Settings(
            database_url=db_url, demo=True, scheduler_enabled=False, models=json.dumps(models)
        ),
        database=database,
    )
    async with RunningServer(app) as server:
        yield Live(server.url, fake, app)


class TestThroughTheSdk:
    async def test_reply_arrives_and_the_upstream_gets_the_default_budget(
        self, live: Live, world: World
    ) -> None:
        reply = await live.client(world.alice).chat.completions.create(
            model="fast", messages=QUESTION
        )
        assert reply.choices[0].message.content
        assert live.upstream.bodies[0]["max_tokens"] == 1024

    async def test_budget_beyond_the_model_limit_is_a_bad_request_naming_it(
        self, live: Live, world: World
    ) -> None:
        with pytest.raises(openai.BadRequestError) as raised:
            await live.client(world.alice).chat.completions.create(
                model="fast", messages=QUESTION, max_tokens=900_000, n=64
            )
        assert raised.value.param == "max_tokens"
        assert live.upstream.bodies == []

    async def test_several_choices_on_a_single_choice_model_is_a_bad_request(
        self, live: Live, world: World
    ) -> None:
        with pytest.raises(openai.BadRequestError) as raised:
            await live.client(world.alice).chat.completions.create(
                model="single", messages=QUESTION, n=2
            )
        assert raised.value.param == "n"

    async def test_member_with_1000_tokens_left_can_say_hi(
        self, live: Live, world: World, database: Database
    ) -> None:
        await leave(database, world.nora.id, 1000)
        hi = [{"role": "user", "content": "hi"}]
        reply = await live.client(world.nora).chat.completions.create(model="fast", messages=hi)
        assert reply.choices[0].message.content
        assert live.upstream.bodies[0]["max_tokens"] == 1000 - prompt_tokens(hi)

    async def test_running_out_is_insufficient_quota(self, live: Live, world: World) -> None:
        with pytest.raises(openai.RateLimitError) as raised:
            await live.client(world.nora).chat.completions.create(
                model="fast", messages=QUESTION, max_tokens=5000
            )
        assert raised.value.code == "insufficient_quota"


class TestStandingHeaders:
    """A client reads where it stands from the reply's headers (``with_raw_response``)."""

    async def test_a_reply_carries_what_is_left_and_the_next_reset(
        self, live: Live, world: World
    ) -> None:
        raw = await live.client(world.alice).chat.completions.with_raw_response.create(
            model="fast", messages=QUESTION
        )
        reply = raw.parse()
        assert reply.choices[0].message.content
        left = int(raw.headers["x-tokendesk-remaining"])
        assert 0 < left < 50_000
        assert raw.headers["x-tokendesk-reset-at"].endswith("Z")
        assert "x-tokendesk-low-balance" not in raw.headers

    async def test_a_streamed_reply_under_the_threshold_carries_the_request_link(
        self, live: Live, world: World, database: Database
    ) -> None:
        await leave(database, world.nora.id, 4_000)
        async with database.transaction() as s:
            # What is left now is under a fifth of what the period gives.
            await record_usage(
                s,
                organization_id=world.org_id,
                events=[UsageInput("elsewhere", world.nora.id, "fast", 3_500, 0)],
            )
        raw = await live.client(world.nora).chat.completions.with_raw_response.create(
            model="fast", messages=QUESTION, stream=True, max_tokens=50
        )
        chunks = [chunk async for chunk in raw.parse()]
        assert chunks
        assert 0 <= int(raw.headers["x-tokendesk-remaining"]) < 500
        assert raw.headers["x-tokendesk-low-balance"] == "true"
        link = raw.headers["x-tokendesk-request-link"]
        assert link.startswith(f"{live.url}/ask/")


class TestEmbeddingsThroughTheSdk:
    @pytest.mark.parametrize(
        ("given", "count"),
        [("Say hello", 1), (["Say", "hello"], 2), ([1, 2, 3], 1), ([[1, 2], [3]], 2)],
    )
    async def test_each_input_shape_is_embedded_and_debited_exactly(
        self, live: Live, world: World, database: Database, given: Any, count: int
    ) -> None:
        reply = await live.client(world.alice).embeddings.create(model="fast", input=given)
        assert len(reply.data) == count
        assert reply.data[0].embedding == [0.5, -0.25, 0.125]
        assert reply.usage.prompt_tokens == 7
        await live.settled()
        after = await balance_of(database, world.alice.id)
        assert (after.used, after.reserved) == (7, 0)

    async def test_a_chat_only_model_is_a_bad_request_naming_the_model(
        self, live: Live, world: World, database: Database
    ) -> None:
        with pytest.raises(openai.BadRequestError) as raised:
            await live.client(world.alice).embeddings.create(model="single", input="hi")
        assert raised.value.param == "model"
        after = await balance_of(database, world.alice.id)
        assert (after.used, after.reserved) == (0, 0)

    async def test_running_out_is_insufficient_quota(
        self, live: Live, world: World, database: Database
    ) -> None:
        with pytest.raises(openai.RateLimitError) as raised:
            await live.client(world.nora).embeddings.create(model="fast", input="word " * 6000)
        assert raised.value.code == "insufficient_quota"
        assert "Ask for more tokens here:" in raised.value.message
        assert live.upstream.bodies == []

    async def test_models_list_parses_with_each_models_apis(self, live: Live, world: World) -> None:
        models = [model async for model in live.client(world.alice).models.list()]
        apis = {model.id: getattr(model, "apis", None) for model in models}
        assert apis == {"fast": ["chat", "embeddings"], "single": ["chat"]}


@pytest.fixture
async def demo_url(database: Database, db_url: str) -> AsyncIterator[str]:
    app = create_app(
        Settings(database_url=db_url, demo=True, scheduler_enabled=False), database=database
    )
    async with RunningServer(app) as server:
        yield server.url


async def test_the_demo_model_answers_the_sdk_in_base64_and_floats(
    demo_url: str, world: World
) -> None:
    client = openai.AsyncOpenAI(base_url=f"{demo_url}/v1", api_key=world.alice.key, max_retries=0)
    # The SDK asks for base64 unless told otherwise, and decodes it to floats.
    decoded = await client.embeddings.create(model="demo", input=["Say hello", "again"])
    floats = await client.embeddings.create(
        model="demo", input=["Say hello", "again"], encoding_format="float"
    )
    assert len(decoded.data) == 2 and len(decoded.data[0].embedding) == 8
    assert decoded.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    assert decoded.data[0].embedding != decoded.data[1].embedding
