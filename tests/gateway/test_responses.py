"""``POST /v1/responses`` through the official ``openai`` SDK and hostile bodies:
held, relayed and settled under the chat rules, nothing left held."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.factories import World
from tests.fake_upstream import REPLY
from tests.gateway.conftest import Live, charged, events
from tests.gateway.test_budget import leave
from tokendesk.db import Database
from tokendesk.gateway import completion
from tokendesk.gateway.tokens import text_tokens


class TestThroughTheSdk:
    async def test_create_is_debited_the_reported_usage_with_its_kinds(
        self, live: Live, world: World, database: Database
    ) -> None:
        reply = await live.client(world.alice).responses.create(
            model="fast", input="Say hello", instructions="Be brief", user="alice"
        )
        assert reply.output_text == REPLY
        await live.settled()
        assert await charged(database, world.alice.id) == 36
        assert await events(database) == [("responses", 17, 19, 5, 6)]
        sent = live.upstream.bodies[0]
        # tokendesk sets the output cap; the member's name never goes upstream.
        assert sent["max_output_tokens"] == 1024 and "user" not in sent
        assert sent["input"] == "Say hello" and sent["instructions"] == "Be brief"

    async def test_stream_helper_gives_the_text_and_usage_is_debited(
        self, live: Live, world: World, database: Database
    ) -> None:
        async with live.client(world.alice).responses.stream(
            model="fast", input=[{"role": "user", "content": "Say hello"}]
        ) as stream:
            deltas = [event.delta async for event in stream if event.type.endswith("text.delta")]
            final = await stream.get_final_response()
        assert "".join(deltas) == REPLY + " "
        assert final.usage is not None and final.usage.output_tokens == 19
        await live.settled()
        assert await charged(database, world.alice.id) == 36
        assert live.upstream.bodies[0]["stream"] is True

    async def test_create_with_stream_relays_every_event_in_order(
        self, live: Live, world: World, database: Database
    ) -> None:
        stream = await live.client(world.alice).responses.create(
            model="fast", input="Say hello", stream=True
        )
        kinds = [event.type async for event in stream]
        assert kinds[:2] == ["response.created", "response.in_progress"]
        assert kinds[-1] == "response.completed"
        await live.settled()
        assert await charged(database, world.alice.id) == 36

    async def test_the_demo_model_answers_create_and_stream_debiting_what_it_reports(
        self, live: Live, world: World, database: Database
    ) -> None:
        client = live.client(world.alice)
        reply = await client.responses.create(model="demo", input="Say hello")
        assert "demo model" in reply.output_text and reply.usage is not None
        async with client.responses.stream(model="demo", input="Say hello") as stream:
            final = await stream.get_final_response()
        assert final.output_text == reply.output_text and final.usage is not None
        kinds = [
            event.type
            async for event in await client.responses.create(
                model="demo", input="Say hello", stream=True
            )
        ]
        assert kinds == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            *["response.output_text.delta"] * (len(kinds) - 8),
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
        await live.settled()
        each = reply.usage.input_tokens + reply.usage.output_tokens
        assert await charged(database, world.alice.id) == 3 * each

    async def test_running_out_is_insufficient_quota_with_the_request_link(
        self, live: Live, world: World, database: Database
    ) -> None:
        await leave(database, world.nora.id, 10)
        with pytest.raises(openai.RateLimitError) as raised:
            await live.client(world.nora).responses.create(model="fast", input="Say hello")
        assert raised.value.code == "insufficient_quota"
        assert "Ask for more tokens here:" in raised.value.message
        assert live.upstream.bodies == []

    async def test_a_model_not_speaking_responses_is_a_bad_request_naming_the_model(
        self, live: Live, world: World, database: Database
    ) -> None:
        with pytest.raises(openai.BadRequestError) as raised:
            await live.client(world.alice).responses.create(model="chatonly", input="hi")
        assert raised.value.param == "model"
        assert "does not speak the responses API" in raised.value.message
        assert await charged(database, world.alice.id) == 0


class TestUpstreamFaults:
    async def test_no_usage_charges_the_estimate_and_the_counted_text(
        self, live: Live, world: World, database: Database
    ) -> None:
        reply = await live.client(world.alice).responses.create(model="nousage", input="hi")
        assert reply.output_text == REPLY
        await live.settled()
        [(_, prompt, completion, _, _)] = await events(database)
        assert completion == text_tokens(REPLY) and prompt > 0
        assert await charged(database, world.alice.id) == prompt + completion

    async def test_an_upstream_error_releases_the_hold(
        self, live: Live, world: World, database: Database
    ) -> None:
        with pytest.raises(openai.InternalServerError):
            await live.client(world.alice).responses.create(model="error", input="hi")
        await live.settled()
        assert await charged(database, world.alice.id) == 0

    async def test_a_cut_stream_charges_what_was_delivered_and_the_prompt(
        self, live: Live, world: World, database: Database
    ) -> None:
        async with (
            live.http(world.alice) as http,
            http.stream(
                "POST", "/v1/responses", json={"model": "drop", "input": "hi", "stream": True}
            ) as r,
        ):
            text = "".join([chunk async for chunk in r.aiter_text()])
        assert "event: error" in text and "upstream failed mid-stream" in text
        await live.settled()
        [(_, prompt, completion, _, _)] = await events(database)
        assert completion == text_tokens("Hello from ")
        assert await charged(database, world.alice.id) == prompt + completion

    async def test_absurd_usage_is_not_believed(
        self, live: Live, world: World, database: Database
    ) -> None:
        live.upstream.responses_usage = {"input_tokens": 10**8, "output_tokens": 10**8}
        await live.client(world.alice).responses.create(model="fast", input="hi")
        await live.settled()
        [(_, prompt, completion, _, _)] = await events(database)
        assert completion == text_tokens(REPLY) and prompt < 100
        assert live.gateway.overruns.unusable_usage == 1

    async def test_context_the_upstream_keeps_is_charged_in_full_and_recorded(
        self, live: Live, world: World, database: Database
    ) -> None:
        live.upstream.responses_usage = {"input_tokens": 60_000, "output_tokens": 19}
        await live.client(world.alice).responses.create(
            model="fast", input="and then?", previous_response_id="resp_earlier"
        )
        await live.settled()
        assert await charged(database, world.alice.id) == 60_019
        assert live.gateway.overruns.calls == 1

    async def test_without_earlier_context_the_same_usage_is_absurd(
        self, live: Live, world: World, database: Database
    ) -> None:
        live.upstream.responses_usage = {"input_tokens": 60_000, "output_tokens": 19}
        await live.client(world.alice).responses.create(model="fast", input="and then?")
        await live.settled()
        assert await charged(database, world.alice.id) < 1_000


def raw_stream(instructions: str) -> bytes:
    """A Responses stream whose first and last events repeat long ``instructions``, as
    the API's events repeat the request's: each a line longer than a read of the
    connection."""
    response: dict[str, Any] = {"id": "resp_long", "object": "response", "model": "fast"}
    started = {**response, "status": "in_progress", "instructions": instructions}
    usage = {"input_tokens": 10, "output_tokens": 2}
    done = {**started, "status": "completed", "usage": usage}
    events = [
        ("response.created", {"response": started}),
        ("response.output_text.delta", {"item_id": "m", "output_index": 0, "delta": "Hello"}),
        ("response.completed", {"response": done}),
    ]
    lines = []
    for number, (kind, fields) in enumerate(events):
        data = json.dumps({"type": kind, "sequence_number": number, **fields})
        lines.append(f"event: {kind}\ndata: {data}\n\n")
    return "".join(lines).encode()


class TestLongEvents:
    async def test_events_longer_than_a_read_are_relayed_whole_and_settled(
        self, live: Live, world: World, database: Database
    ) -> None:
        instructions = "Answer in the house style. " * 12_000
        live.upstream.raw = raw_stream(instructions)
        stream = await live.client(world.alice).responses.create(
            model="fast", input="hi", stream=True
        )
        received = [event async for event in stream]
        assert [event.type for event in received] == [
            "response.created",
            "response.output_text.delta",
            "response.completed",
        ]
        final = received[-1]
        assert final.type == "response.completed"
        assert final.response.instructions == instructions
        await live.settled()
        assert await charged(database, world.alice.id) == 12

    async def test_a_line_past_the_bound_cuts_the_stream_charging_what_was_delivered(
        self, live: Live, world: World, database: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(completion, "MAX_EVENT_LINE", 10_000)
        live.upstream.raw = raw_stream("x") + b"data: " + b"y" * 20_000
        async with (
            live.http(world.alice) as http,
            http.stream(
                "POST", "/v1/responses", json={"model": "fast", "input": "hi", "stream": True}
            ) as r,
        ):
            text = "".join([chunk async for chunk in r.aiter_text()])
        assert "upstream failed mid-stream: an event line longer than 10,000 bytes" in text
        await live.settled()
        [(_, prompt, delivered, _, _)] = await events(database)
        # The usage came before the long line: the reported figures settle it.
        assert (prompt, delivered) == (10, 2)


class TestHostileBodies:
    @pytest.mark.parametrize(
        ("extra", "param"),
        [
            ({"max_output_tokens": 10**9}, "max_output_tokens"),
            ({"max_output_tokens": -5}, "max_output_tokens"),
            ({"max_output_tokens": "lots"}, "max_output_tokens"),
            ({"max_output_tokens": True}, "max_output_tokens"),
            ({"input": 42}, "input"),
            ({"input": ["not an item"]}, "input"),
            ({"input": []}, "input"),
            ({"instructions": ["x"]}, "instructions"),
            ({"tools": "all"}, "tools"),
            ({"reasoning": "high"}, "reasoning"),
            ({"stream": "yes"}, "stream"),
            ({"background": True}, "background"),
            ({"model": 7}, "model"),
        ],
    )
    async def test_a_bad_field_is_a_400_naming_it_and_nothing_is_held(
        self, live: Live, world: World, database: Database, extra: dict[str, Any], param: str
    ) -> None:
        async with live.http(world.alice) as http:
            r = await http.post("/v1/responses", json={"model": "fast", "input": "hi", **extra})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert (error["param"], error["type"]) == (param, "invalid_request_error")
        assert await charged(database, world.alice.id) == 0
        assert live.upstream.bodies == []

    async def test_an_unknown_model_is_model_not_found(self, live: Live, world: World) -> None:
        async with live.http(world.alice) as http:
            r = await http.post("/v1/responses", json={"model": "nope", "input": "hi"})
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "model_not_found"

    async def test_a_huge_input_is_held_whole_or_refused(
        self, live: Live, world: World, database: Database
    ) -> None:
        async with live.http(world.nora) as http:
            r = await http.post("/v1/responses", json={"model": "fast", "input": "word " * 40_000})
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "insufficient_quota"
        assert await charged(database, world.nora.id) == 0
