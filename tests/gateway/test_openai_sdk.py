"""The gateway's budget rules as a client sees them through the official ``openai`` SDK."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import openai
import pytest

from tests.factories import Person, World
from tests.fake_upstream import FakeUpstream, RunningServer
from tests.gateway.test_budget import leave
from tokendesk.app import create_app
from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.gateway.tokens import prompt_tokens

QUESTION = [{"role": "user", "content": "Say hello"}]


@dataclass
class Live:
    url: str
    upstream: FakeUpstream

    def client(self, person: Person) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=person.key, max_retries=0)


@pytest.fixture
async def live(
    database: Database, db_url: str, upstream: tuple[FakeUpstream, str]
) -> AsyncIterator[Live]:
    fake, upstream_url = upstream
    models = [
        {"name": "fast", "base_url": f"{upstream_url}/v1"},
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
        yield Live(server.url, fake)


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
