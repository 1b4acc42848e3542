"""``POST /v1/embeddings``: held, relayed and settled under the chat rules."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.factories import World
from tests.gateway.conftest import Harness
from tests.ledger_support import balance_of
from tests.serving import serving
from tokendesk.app import create_app
from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.gateway.embeddings import MAX_INPUTS
from tokendesk.gateway.model_config import SERVED_APIS
from tokendesk.gateway.routes import Gateway
from tokendesk.gateway.tokens import text_tokens
from tokendesk.metering.models import UsageEvent

TEXT = "The quick brown fox jumps over the lazy dog."


def body(model: str, given: Any = TEXT, **extra: Any) -> dict[str, Any]:
    return {"model": model, "input": given, **extra}


async def endpoints(database: Database) -> list[tuple[str | None, int, int]]:
    async with database.transaction(write=False) as s:
        rows = await s.execute(
            select(UsageEvent.endpoint, UsageEvent.prompt_tokens, UsageEvent.completion_tokens)
        )
        return [tuple(row) for row in rows]


async def untouched(database: Database, user_id: int) -> None:
    balance = await balance_of(database, user_id)
    assert (balance.used, balance.reserved) == (0, 0)


class TestMetered:
    async def test_reported_usage_is_debited_exactly_as_an_embeddings_call(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        r = await harness.http.post(
            "/v1/embeddings", json=body("fast", user="alice"), headers=world.alice.headers
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["data"]) == 1
        assert r.headers["x-tokendesk-remaining"] and r.headers["x-tokendesk-reset-at"]
        await harness.settled()
        after = await balance_of(database, world.alice.id)
        assert (after.used, after.reserved) == (7, 0)
        assert await endpoints(database) == [("embeddings", 7, 0)]
        # The upstream gets its own key and the input, never the member's key or name.
        assert harness.upstream.bodies == [{"model": "fast", "input": TEXT}]
        assert harness.upstream.authorizations == ["Bearer sk-upstream-secret"]

    async def test_chat_calls_record_their_endpoint(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        messages = [{"role": "user", "content": "hi"}]
        r = await harness.http.post(
            "/v1/chat/completions",
            json={"model": "fast", "messages": messages},
            headers=world.alice.headers,
        )
        assert r.status_code == 200, r.text
        await harness.settled()
        assert await endpoints(database) == [("chat", 11, 13)]

    async def test_the_model_weight_applies(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        r = await harness.http.post(
            "/v1/embeddings", json=body("heavy"), headers=world.alice.headers
        )
        assert r.status_code == 200, r.text
        await harness.settled()
        assert (await balance_of(database, world.alice.id)).used == 18  # 7 x 2.5, rounded up

    @pytest.mark.parametrize(
        ("given", "estimate"),
        [
            (TEXT, text_tokens(TEXT)),
            (["one two", "three"], text_tokens("one two") + text_tokens("three")),
            ([1, 2, 3], 3),
            ([[1, 2, 3], [4, 5]], 5),
        ],
    )
    async def test_without_usage_the_estimate_is_charged(
        self, harness: Harness, world: World, database: Database, given: Any, estimate: int
    ) -> None:
        r = await harness.http.post(
            "/v1/embeddings", json=body("nousage", given), headers=world.alice.headers
        )
        assert r.status_code == 200, r.text
        await harness.settled()
        after = await balance_of(database, world.alice.id)
        assert (after.used, after.reserved) == (estimate, 0)

    async def test_unbelievable_usage_is_counted_as_the_estimate(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        harness.upstream.embedding_usage = {"prompt_tokens": 10**9, "total_tokens": 10**9}
        r = await harness.http.post(
            "/v1/embeddings", json=body("fast"), headers=world.alice.headers
        )
        assert r.status_code == 200, r.text
        await harness.settled()
        assert (await balance_of(database, world.alice.id)).used == text_tokens(TEXT)
        assert harness.gateway.overruns.unusable_usage == 1

    async def test_an_upstream_error_is_passed_on_and_releases_the_hold(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        r = await harness.http.post(
            "/v1/embeddings", json=body("error"), headers=world.alice.headers
        )
        assert r.status_code == 500
        assert r.json()["error"]["message"] == "upstream exploded"
        await harness.settled()
        await untouched(database, world.alice.id)

    async def test_an_upstream_timeout_is_a_502_and_releases_the_hold(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        r = await harness.http.post(
            "/v1/embeddings", json=body("slow"), headers=world.alice.headers
        )
        assert r.status_code == 502
        assert r.json()["error"]["type"] == "upstream_error"
        await harness.settled()
        await untouched(database, world.alice.id)

    async def test_out_of_tokens_is_insufficient_quota_with_the_request_link(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        # nora has 5,000 tokens; this input counts about 7,500.
        r = await harness.http.post(
            "/v1/embeddings", json=body("fast", "word " * 6000), headers=world.nora.headers
        )
        assert r.status_code == 429
        error = r.json()["error"]
        assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
        assert error["message"].startswith("Not enough tokens: 5000 left")
        assert "Ask for more tokens here: /ask/" in error["message"]
        assert harness.upstream.bodies == []
        await untouched(database, world.nora.id)


class TestRefused:
    async def test_a_model_without_embeddings_is_a_400_naming_the_model(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        r = await harness.http.post(
            "/v1/embeddings", json=body("modern"), headers=world.alice.headers
        )
        assert r.status_code == 400
        error = r.json()["error"]
        assert (error["type"], error["param"]) == ("invalid_request_error", "model")
        assert "does not speak the embeddings API" in error["message"]
        assert harness.upstream.bodies == []
        await untouched(database, world.alice.id)

    async def test_a_chat_call_on_a_model_without_chat_is_a_400_naming_the_model(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        r = await harness.http.post(
            "/v1/chat/completions",
            json={"model": "embedder", "messages": [{"role": "user", "content": "hi"}]},
            headers=world.alice.headers,
        )
        assert r.status_code == 400
        error = r.json()["error"]
        assert (error["type"], error["param"]) == ("invalid_request_error", "model")
        assert "does not speak the chat API" in error["message"]
        assert harness.upstream.bodies == []
        await untouched(database, world.alice.id)

    @pytest.mark.parametrize(
        ("sent", "param"),
        [
            ({"model": "fast"}, "input"),
            (body("fast", ""), "input"),
            (body("fast", []), "input"),
            (body("fast", [""]), "input"),
            (body("fast", [[]]), "input"),
            (body("fast", [[1], []]), "input"),
            (body("fast", [1, "a"]), "input"),
            (body("fast", [True]), "input"),
            (body("fast", [-1]), "input"),
            (body("fast", {"text": "hi"}), "input"),
            (body("fast", ["a"] * (MAX_INPUTS + 1)), "input"),
            (body("fast", "word " * 250_000), "input"),
            (body("fast", encoding_format="hex"), "encoding_format"),
            (body("fast", dimensions=0), "dimensions"),
            ({"input": TEXT}, "model"),
            ([TEXT], "body"),
        ],
    )
    async def test_bad_input_is_a_400_naming_the_field_and_holds_nothing(
        self,
        harness: Harness,
        world: World,
        database: Database,
        sent: Any,
        param: str,
    ) -> None:
        r = await harness.http.post("/v1/embeddings", json=sent, headers=world.alice.headers)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param
        assert harness.upstream.bodies == []
        await untouched(database, world.alice.id)

    async def test_unknown_model_is_a_404(self, harness: Harness, world: World) -> None:
        r = await harness.http.post(
            "/v1/embeddings", json=body("nope"), headers=world.alice.headers
        )
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "model_not_found"

    async def test_no_key_is_a_401(self, harness: Harness) -> None:
        r = await harness.http.post("/v1/embeddings", json=body("fast"))
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"


class TestModelsList:
    async def test_each_model_lists_its_apis(self, harness: Harness, world: World) -> None:
        r = await harness.http.get("/v1/models", headers=world.alice.headers)
        apis = {model["id"]: model["apis"] for model in r.json()["data"]}
        assert apis["fast"] == ["chat", "embeddings"]
        assert apis["modern"] == ["chat"]
        assert apis["embedder"] == ["embeddings"]


@dataclass
class Demo:
    http: httpx.AsyncClient
    gateway: Gateway


@contextlib.asynccontextmanager
async def serving_demo(database: Database, db_url: str, **settings: Any) -> AsyncIterator[Demo]:
    """The gateway with no upstream (``settings`` may still configure models)."""
    app = create_app(
        Settings(database_url=db_url, demo=True, scheduler_enabled=False, **settings),
        database=database,
    )
    transport = httpx.ASGITransport(app=app)
    async with (
        serving(app) as runtime,
        httpx.AsyncClient(transport=transport, base_url="http://test") as http,
    ):
        yield Demo(http, runtime.gateway)


@pytest.fixture
async def demo(database: Database, db_url: str) -> AsyncIterator[Demo]:
    async with serving_demo(database, db_url) as served:
        yield served


class TestDemoModel:
    async def test_the_demo_model_answers_every_served_api(self, demo: Demo, world: World) -> None:
        r = await demo.http.get("/v1/models", headers=world.alice.headers)
        assert r.json()["data"][0]["apis"] == list(SERVED_APIS)

    async def test_the_same_input_gets_the_same_small_vector_and_is_metered(
        self, demo: Demo, world: World, database: Database
    ) -> None:
        calls = [
            await demo.http.post(
                "/v1/embeddings", json=body("demo", [TEXT, "other"]), headers=world.alice.headers
            )
            for _ in range(2)
        ]
        first, second = (call.json() for call in calls)
        assert first["data"] == second["data"]
        vectors = [item["embedding"] for item in first["data"]]
        assert len(vectors) == 2 and vectors[0] != vectors[1] and len(vectors[0]) == 8
        estimate = text_tokens(TEXT) + text_tokens("other")
        assert first["usage"] == {"prompt_tokens": estimate, "total_tokens": estimate}
        await demo.gateway.settler.drain()
        after = await balance_of(database, world.alice.id)
        assert (after.used, after.reserved) == (2 * estimate, 0)

    async def test_dimensions_are_honoured(self, demo: Demo, world: World) -> None:
        r = await demo.http.post(
            "/v1/embeddings", json=body("demo", dimensions=3), headers=world.alice.headers
        )
        assert len(r.json()["data"][0]["embedding"]) == 3
