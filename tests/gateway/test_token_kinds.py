"""Token kinds: cached input and reasoning recorded per call, each kind at its weight.

The "priced" model of the harness charges input at 1, output at 4 and cache hits at
0.25; the fake upstream reports 11 prompt and 13 completion tokens.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from tests.factories import World
from tests.gateway.conftest import Harness
from tests.gateway.test_budget import leave
from tests.gateway.test_embeddings import Demo, serving_demo
from tests.gateway.test_gateway import MESSAGES, body, consistent, sse_data
from tests.ledger_support import balance_of
from tokendesk.accounts.keycache import KeyOwner
from tokendesk.accounts.models import Role
from tokendesk.db import Database
from tokendesk.gateway.budget import parse_chat
from tokendesk.gateway.completion import Completion
from tokendesk.gateway.tokens import prompt_tokens, text_tokens
from tokendesk.metering.models import UsageEvent

PROMPT = prompt_tokens(MESSAGES)
PLAIN = 11 + 13 * 4


def usage(cached: Any = None, reasoning: Any = None, **extra: Any) -> dict[str, Any]:
    reported: dict[str, Any] = {"prompt_tokens": 11, "completion_tokens": 13, "total_tokens": 24}
    if cached is not None:
        reported["prompt_tokens_details"] = {"cached_tokens": cached}
    if reasoning is not None:
        reported["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return {**reported, **extra}


async def recorded(database: Database) -> list[tuple[int, int, int, int, int, str | None]]:
    async with database.transaction(write=False) as s:
        rows = await s.execute(
            select(
                UsageEvent.prompt_tokens,
                UsageEvent.cached_tokens,
                UsageEvent.completion_tokens,
                UsageEvent.reasoning_tokens,
                UsageEvent.total_tokens,
                UsageEvent.endpoint,
            ).order_by(UsageEvent.id)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


async def chat(harness: Harness, world: World, *, stream: bool, model: str = "priced") -> None:
    r = await harness.http.post(
        "/v1/chat/completions", json=body(model, stream=stream), headers=world.alice.headers
    )
    assert r.status_code == 200, r.text
    await harness.settled()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
class TestPerKindCharges:
    async def test_each_kind_is_charged_at_its_weight_and_recorded(
        self, harness: Harness, world: World, database: Database, stream: bool
    ) -> None:
        harness.upstream.usage = usage(cached=8, reasoning=5)
        await chat(harness, world, stream=stream)
        # 3 uncached input at 1, 8 cached at 0.25, 13 output at 4 (reasoning is output).
        charged = 3 + 2 + 52
        assert await recorded(database) == [(11, 8, 13, 5, charged, "chat")]
        after = await balance_of(database, world.alice.id)
        assert (after.used, after.reserved) == (charged, 0)
        await consistent(database)

    async def test_a_prompt_served_whole_from_the_cache_pays_the_cache_rate(
        self, harness: Harness, world: World, database: Database, stream: bool
    ) -> None:
        harness.upstream.usage = usage(cached=11)
        await chat(harness, world, stream=stream)
        assert (await balance_of(database, world.alice.id)).used == 3 + 52  # 2.75 + 52, up

    async def test_usage_without_details_is_charged_as_uncached_input(
        self, harness: Harness, world: World, database: Database, stream: bool
    ) -> None:
        await chat(harness, world, stream=stream)
        assert await recorded(database) == [(11, 0, 13, 0, PLAIN, "chat")]

    async def test_a_flat_weight_model_still_records_the_kinds(
        self, harness: Harness, world: World, database: Database, stream: bool
    ) -> None:
        harness.upstream.usage = usage(cached=8, reasoning=5)
        await chat(harness, world, stream=stream, model="heavy")
        assert await recorded(database) == [(11, 8, 13, 5, 60, "chat")]  # 24 x 2.5

    async def test_output_counted_for_want_of_usage_pays_the_output_weight(
        self, harness: Harness, world: World, database: Database, stream: bool
    ) -> None:
        harness.upstream.usage = None
        r = await harness.http.post(
            "/v1/chat/completions", json=body("priced", stream=stream), headers=world.alice.headers
        )
        assert r.status_code == 200, r.text
        await harness.settled()
        expected = PROMPT + 4 * text_tokens(delivered(r, stream=stream))
        assert (await balance_of(database, world.alice.id)).used == expected


def delivered(r: httpx.Response, *, stream: bool) -> str:
    """The text of a chat reply, whole or streamed."""
    if not stream:
        return str(r.json()["choices"][0]["message"]["content"])
    chunks = [json.loads(data) for data in sse_data(r.text) if data != "[DONE]"]
    return "".join(
        choice["delta"].get("content", "") for chunk in chunks for choice in chunk["choices"]
    )


HOSTILE = [
    {"prompt_tokens_details": {"cached_tokens": -1}},
    {"prompt_tokens_details": {"cached_tokens": True}},
    {"prompt_tokens_details": {"cached_tokens": 12}},  # more than the prompt's 11
    {"prompt_tokens_details": {"cached_tokens": 10**30}},
    {"prompt_tokens_details": {"cached_tokens": "8"}},
    {"prompt_tokens_details": {"cached_tokens": 8.0}},
    {"prompt_tokens_details": {"cached_tokens": None}},
    {"prompt_tokens_details": "cached"},
    {"prompt_tokens_details": [8]},
    {"completion_tokens_details": {"reasoning_tokens": -5}},
    {"completion_tokens_details": {"reasoning_tokens": 14}},  # more than the output's 13
    {"completion_tokens_details": {"reasoning_tokens": False}},
    {"completion_tokens_details": {"reasoning_tokens": "5"}},
    {"completion_tokens_details": {"reasoning_tokens": 10**400}},
    {"completion_tokens_details": 5},
]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("details", HOSTILE)
async def test_unbelievable_details_count_as_none_and_the_totals_are_charged(
    harness: Harness, world: World, database: Database, details: dict[str, Any], stream: bool
) -> None:
    harness.upstream.usage = usage(**details)
    await chat(harness, world, stream=stream)
    assert await recorded(database) == [(11, 0, 13, 0, PLAIN, "chat")]
    after = await balance_of(database, world.alice.id)
    assert (after.used, after.reserved) == (PLAIN, 0)
    assert harness.gateway.overruns.unusable_usage == 0


@pytest.mark.parametrize(
    ("cached", "reasoning"), [(-1, -1), (12, 14), ("8", "5"), (True, True), (8.0, None)]
)
async def test_settle_counts_parts_it_cannot_believe_as_none(
    harness: Harness, world: World, database: Database, cached: Any, reasoning: Any
) -> None:
    # Every endpoint's call settles through here, with whatever its upstream reported.
    gateway = harness.gateway
    chat = parse_chat(body("priced"), gateway.models)
    hold = await gateway.holds.hold(
        user_id=world.alice.id, organization_id=world.org_id, amount=500
    )
    caller = KeyOwner(world.alice.id, world.org_id, Role.MEMBER, world.alice.email)
    Completion(gateway, caller, chat, hold.id, held=hold.amount).settle(
        11, 13, cached=cached, reasoning=reasoning
    )
    await harness.settled()
    assert await recorded(database) == [(11, 0, 13, 0, PLAIN, "chat")]
    after = await balance_of(database, world.alice.id)
    assert (after.used, after.reserved) == (PLAIN, 0)


class TestHolds:
    async def test_the_prompt_is_held_at_the_input_weight_and_the_budget_at_the_outputs(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        # The default budget of 100 at 4 per token, the prompt at 1: 30 tokens short.
        await leave(database, world.nora.id, PROMPT + 400 - 30)
        r = await harness.http.post(
            "/v1/chat/completions", json=body("priced"), headers=world.nora.headers
        )
        assert r.status_code == 200, r.text
        # What is left pays for 92 output tokens at 4 (368 of the 370 after the prompt).
        assert harness.upstream.bodies[0]["max_tokens"] == (400 - 30) // 4

    async def test_a_clients_budget_is_held_at_the_output_weight(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        await leave(database, world.nora.id, PROMPT + 4 * 50 - 1)
        r = await harness.http.post(
            "/v1/chat/completions",
            json=body("priced", max_tokens=50),
            headers=world.nora.headers,
        )
        assert r.status_code == 429
        assert harness.upstream.bodies == []
        await leave(database, world.nora.id, PROMPT + 4 * 50)
        r = await harness.http.post(
            "/v1/chat/completions",
            json=body("priced", max_tokens=50),
            headers=world.nora.headers,
        )
        assert r.status_code == 200, r.text
        assert harness.upstream.bodies[0]["max_tokens"] == 50

    async def test_a_call_that_uses_its_whole_budget_costs_no_more_than_its_hold(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        await leave(database, world.nora.id, PROMPT + 4 * 100)
        # The upstream bills exactly the prompt estimate and the whole budget it was sent.
        harness.upstream.usage = {"prompt_tokens": PROMPT, "completion_tokens": 100}
        harness.upstream.deltas = [{"content": "word " * 100}]
        r = await harness.http.post(
            "/v1/chat/completions", json=body("priced"), headers=world.nora.headers
        )
        assert r.status_code == 200, r.text
        await harness.settled()
        after = await balance_of(database, world.nora.id)
        assert (after.remaining, after.reserved) == (0, 0)
        assert harness.gateway.overruns.calls == 0

    async def test_embeddings_hold_and_charge_the_input_weight(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        r = await harness.http.post(
            "/v1/embeddings",
            json={"model": "priced", "input": "hello"},
            headers=world.alice.headers,
        )
        assert r.status_code == 200, r.text
        await harness.settled()
        assert await recorded(database) == [(7, 0, 0, 0, 7, "embeddings")]


class TestOfficialClient:
    async def test_the_openai_sdk_reads_back_the_details_it_was_charged_for(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        harness.upstream.usage = usage(cached=8, reasoning=5)
        client = openai.AsyncOpenAI(
            api_key=world.alice.key,
            base_url="http://test/v1",
            http_client=harness.http,
        )
        reply = await client.chat.completions.create(model="priced", messages=MESSAGES)  # type: ignore[arg-type]
        assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
        assert reply.usage.prompt_tokens_details.cached_tokens == 8
        await harness.settled()
        assert (await balance_of(database, world.alice.id)).used == 3 + 2 + 52


# The demo model priced per kind: input at 2, output at 3.
DEMO_WEIGHTS = {"input": 2.0, "output": 3.0}


@pytest.fixture
async def priced_demo(database: Database, db_url: str) -> AsyncIterator[Demo]:
    models = [{"name": "demo", "weights": DEMO_WEIGHTS, "apis": ["chat", "embeddings"]}]
    async with serving_demo(database, db_url, models=json.dumps(models)) as served:
        yield served


class TestPricedDemoModel:
    @pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
    async def test_the_demo_model_charges_each_kind_at_its_weight(
        self, priced_demo: Demo, world: World, database: Database, stream: bool
    ) -> None:
        r = await priced_demo.http.post(
            "/v1/chat/completions", json=body("demo", stream=stream), headers=world.alice.headers
        )
        assert r.status_code == 200, r.text
        await priced_demo.gateway.settler.drain()
        completion = text_tokens(delivered(r, stream=stream))
        assert completion > 0
        expected = 2 * PROMPT + 3 * completion
        after = await balance_of(database, world.alice.id)
        assert (after.used, after.reserved) == (expected, 0)
        assert await recorded(database) == [(PROMPT, 0, completion, 0, expected, "chat")]

    async def test_demo_embeddings_pay_the_input_weight(
        self, priced_demo: Demo, world: World, database: Database
    ) -> None:
        r = await priced_demo.http.post(
            "/v1/embeddings", json={"model": "demo", "input": "hello"}, headers=world.alice.headers
        )
        assert r.status_code == 200, r.text
        await priced_demo.gateway.settler.drain()
        estimate = text_tokens("hello")
        assert await recorded(database) == [(estimate, 0, 0, 0, 2 * estimate, "embeddings")]
