"""The legacy ``POST /v1/completions`` through the official ``openai`` SDK and hostile
bodies: ``best_of`` held and capped, usage debited exactly, nothing left held."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.factories import World
from tests.fake_upstream import REPLY
from tests.gateway.conftest import Live, charged, events
from tokendesk.db import Database
from tokendesk.gateway.tokens import text_tokens


class TestThroughTheSdk:
    async def test_create_is_debited_the_reported_usage_at_the_default_cap(
        self, live: Live, world: World, database: Database
    ) -> None:
        reply = await live.client(world.alice).completions.create(model="fast", prompt="Say")
        assert reply.choices[0].text == REPLY
        await live.settled()
        assert await charged(database, world.alice.id) == 24
        assert await events(database) == [("completions", 11, 13, 0, 0)]
        # OpenAI's own default budget, set by tokendesk.
        assert live.upstream.bodies[0]["max_tokens"] == 16

    async def test_a_stream_with_usage_is_debited_and_relays_the_usage(
        self, live: Live, world: World, database: Database
    ) -> None:
        stream = await live.client(world.alice).completions.create(
            model="fast", prompt="Say", stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        assert "".join(c.choices[0].text for c in chunks if c.choices) == REPLY + " "
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 24
        await live.settled()
        assert await charged(database, world.alice.id) == 24

    async def test_a_stream_without_usage_asked_still_settles_on_it(
        self, live: Live, world: World, database: Database
    ) -> None:
        stream = await live.client(world.alice).completions.create(
            model="fast", prompt=[1, 2, 3], stream=True
        )
        chunks = [chunk async for chunk in stream]
        assert all(chunk.usage is None for chunk in chunks)
        assert live.upstream.bodies[0]["stream_options"] == {"include_usage": True}
        await live.settled()
        assert await charged(database, world.alice.id) == 24

    async def test_best_of_is_held_for_every_generation_and_capped(
        self, live: Live, world: World, database: Database
    ) -> None:
        await live.client(world.alice).completions.create(
            model="fast", prompt=["a b", "c d"], n=2, best_of=3, max_tokens=50
        )
        sent = live.upstream.bodies[0]
        assert (sent["max_tokens"], sent["best_of"], sent["n"]) == (50, 3, 2)
        await live.settled()
        assert await charged(database, world.alice.id) == 24

    async def test_the_demo_model_answers_both_ways_with_echo(
        self, live: Live, world: World, database: Database
    ) -> None:
        client = live.client(world.alice)
        reply = await client.completions.create(model="demo", prompt="Say hello", echo=True)
        assert reply.choices[0].text.startswith("Say hello")
        assert reply.usage is not None
        stream = await client.completions.create(
            model="demo",
            prompt="Say hello",
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        assert chunks[-1].usage is not None
        await live.settled()
        assert await charged(database, world.alice.id) == (
            reply.usage.total_tokens + chunks[-1].usage.total_tokens
        )

    async def test_a_cut_stream_charges_what_was_delivered_and_the_prompt(
        self, live: Live, world: World, database: Database
    ) -> None:
        stream = await live.client(world.alice).completions.create(
            model="drop", prompt="Say", stream=True
        )
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass
        await live.settled()
        [(_, prompt, completion, _, _)] = await events(database)
        assert completion == text_tokens("Hello from the ")
        assert await charged(database, world.alice.id) == prompt + completion

    async def test_an_upstream_error_releases_the_hold(
        self, live: Live, world: World, database: Database
    ) -> None:
        with pytest.raises(openai.InternalServerError):
            await live.client(world.alice).completions.create(model="error", prompt="Say")
        await live.settled()
        assert await charged(database, world.alice.id) == 0


class TestHostileBodies:
    @pytest.mark.parametrize(
        ("extra", "param"),
        [
            ({"max_tokens": 10**9}, "max_tokens"),
            ({"max_tokens": 0}, "max_tokens"),
            ({"n": 3, "best_of": 2}, "best_of"),
            ({"best_of": 21}, "best_of"),
            ({"prompt": ["x"] * 20, "best_of": 20}, "best_of"),
            ({"prompt": 5}, "prompt"),
            ({"prompt": [["a"]]}, "prompt"),
            ({"prompt": ""}, "prompt"),
            ({"echo": "yes"}, "echo"),
            ({"logprobs": 9}, "logprobs"),
            ({"suffix": 1}, "suffix"),
        ],
    )
    async def test_a_bad_field_is_a_400_naming_it_and_nothing_is_held(
        self, live: Live, world: World, database: Database, extra: dict[str, Any], param: str
    ) -> None:
        async with live.http(world.alice) as http:
            r = await http.post("/v1/completions", json={"model": "fast", "prompt": "hi", **extra})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param
        assert await charged(database, world.alice.id) == 0
        assert live.upstream.bodies == []

    async def test_a_chat_only_model_is_a_bad_request_and_running_out_is_429(
        self, live: Live, world: World
    ) -> None:
        with pytest.raises(openai.BadRequestError) as raised:
            await live.client(world.alice).completions.create(model="chatonly", prompt="hi")
        assert raised.value.param == "model"
        with pytest.raises(openai.RateLimitError) as refused:
            await live.client(world.nora).completions.create(
                model="fast", prompt="hi", max_tokens=6000
            )
        assert refused.value.code == "insufficient_quota"
