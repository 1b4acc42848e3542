"""``/v1/messages`` and its count_tokens: every refusal a 400 (or 401, 413) in Anthropic's
shape naming what is wrong, nothing held nor sent upstream; the headers forwarded
bounded; the model configuration's Anthropic kind checked at start-up."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.factories import World
from tests.fake_upstream import FakeUpstream
from tests.gateway.test_anthropic_sdk import QUESTION, UPSTREAM_KEY, anthropic_model
from tests.gateway.test_integrations import integration
from tests.ledger_support import balance_of
from tests.serving import serving
from tokendesk.accounts.models import IdentityPreset
from tokendesk.app import create_app
from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.gateway.model_config import ModelConfig, load_models
from tokendesk.gateway.routes import Gateway

BODY_LIMIT = 64 << 10


@dataclass
class Desk:
    http: httpx.AsyncClient
    gateway: Gateway
    upstream: FakeUpstream

    async def post(
        self, key: str, body: Any, *, path: str = "/v1/messages", **headers: str
    ) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await self.http.post(
            path,
            content=content,
            headers={"x-api-key": key, "content-type": "application/json", **headers},
        )


@pytest.fixture
async def desk(
    database: Database, db_url: str, upstream: tuple[FakeUpstream, str]
) -> AsyncIterator[Desk]:
    fake, url = upstream
    models = [anthropic_model("claude", url, upstream_model="fast", max_output_tokens=8000)]
    settings = Settings(
        database_url=db_url,
        demo=True,
        scheduler_enabled=False,
        models=json.dumps(models),
        gateway_body_max_bytes=BODY_LIMIT,
    )
    app = create_app(settings, database=database)
    transport = httpx.ASGITransport(app=app)
    async with (
        serving(app) as runtime,
        httpx.AsyncClient(transport=transport, base_url="http://test") as http,
    ):
        yield Desk(http, runtime.gateway, fake)


def message(**fields: Any) -> dict[str, Any]:
    return {"model": "claude", "max_tokens": 100, "messages": QUESTION, **fields}


def refused(response: httpx.Response, status: int, kind: str) -> str:
    """The message of an Anthropic-shaped error of ``status`` and ``kind``."""
    assert response.status_code == status, response.text
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == kind
    message: str = error["error"]["message"]
    return message


async def nothing_spent(desk: Desk, database: Database, world: World) -> None:
    await desk.gateway.settler.drain()
    balance = await balance_of(database, world.alice.id)
    assert (balance.used, balance.reserved) == (0, 0)
    assert desk.upstream.bodies == []


HOSTILE = [
    ({"max_tokens": None}, "max_tokens"),
    ({"max_tokens": 10**30}, "max_tokens"),
    ({"max_tokens": 8001}, "max_tokens"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": "100"}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"model": 7}, "model"),
    ({"model": None}, "model"),
    ({"messages": "hello"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [5]}, "messages.0"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"stream": "yes"}, "stream"),
    ({"system": 5}, "system"),
    ({"metadata": "me"}, "metadata"),
    ({"thinking": "on"}, "thinking"),
    ({"thinking": {"type": "enabled", "budget_tokens": 100}}, "thinking.budget_tokens"),
    ({"thinking": {"type": "enabled", "budget_tokens": True}}, "thinking.budget_tokens"),
    (
        {"max_tokens": 2000, "thinking": {"type": "enabled", "budget_tokens": 2000}},
        "thinking.budget_tokens",
    ),
]


class TestHostileBodies:
    @pytest.mark.parametrize(("fields", "param"), HOSTILE)
    async def test_is_a_bad_request_naming_the_field(
        self, desk: Desk, world: World, database: Database, fields: dict[str, Any], param: str
    ) -> None:
        body = {k: v for k, v in message(**fields).items() if v is not None}
        text = refused(await desk.post(world.alice.key, body), 400, "invalid_request_error")
        assert text.startswith(f"{param}:")
        await nothing_spent(desk, database, world)

    @pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"text"', b"NaN", b"[" * 50_000])
    async def test_a_body_that_is_no_object_is_a_bad_request(
        self, desk: Desk, world: World, database: Database, body: bytes
    ) -> None:
        text = refused(await desk.post(world.alice.key, body), 400, "invalid_request_error")
        assert text.startswith("body:")
        await nothing_spent(desk, database, world)

    async def test_a_body_past_the_limit_is_too_large_in_anthropics_shape(
        self, desk: Desk, world: World, database: Database
    ) -> None:
        huge = message(messages=[{"role": "user", "content": "x" * BODY_LIMIT}])
        refused(await desk.post(world.alice.key, huge), 413, "request_too_large")
        await nothing_spent(desk, database, world)

    async def test_counting_a_hostile_body_is_a_bad_request_too(
        self, desk: Desk, world: World
    ) -> None:
        path = "/v1/messages/count_tokens"
        response = await desk.post(world.alice.key, {"model": "claude", "messages": 3}, path=path)
        assert refused(response, 400, "invalid_request_error").startswith("messages:")


class TestHeaders:
    async def test_without_a_version_the_upstream_gets_the_first_one(
        self, desk: Desk, world: World
    ) -> None:
        response = await desk.post(world.alice.key, message())
        assert response.status_code == 200, response.text
        sent = desk.upstream.anthropic_headers[0]
        assert sent["anthropic-version"] == "2023-06-01" and "anthropic-beta" not in sent
        assert sent["x-api-key"] == UPSTREAM_KEY

    @pytest.mark.parametrize(
        ("header", "value"),
        [
            ("anthropic-version", "v" * 65),
            ("anthropic-version", "2023-06-01; drop"),
            ("anthropic-beta", "b" * 2049),
            ("anthropic-beta", "tools=1"),
            ("anthropic-beta", "x" * 12_000),
        ],
    )
    async def test_a_hostile_header_is_a_bad_request_naming_it(
        self, desk: Desk, world: World, database: Database, header: str, value: str
    ) -> None:
        response = await desk.post(world.alice.key, message(), **{header: value})
        assert refused(response, 400, "invalid_request_error").startswith(f"{header}:")
        await nothing_spent(desk, database, world)


class TestCallers:
    async def test_no_key_is_an_authentication_error(self, desk: Desk) -> None:
        response = await desk.http.post("/v1/messages", json=message())
        refused(response, 401, "authentication_error")

    async def test_a_bad_key_is_refused_before_the_body_is_judged(self, desk: Desk) -> None:
        response = await desk.post("td_nobody", b"{not json")
        refused(response, 401, "authentication_error")

    async def test_an_integration_key_in_x_api_key_bills_the_person_named(
        self, desk: Desk, world: World, database: Database
    ) -> None:
        key = await integration(database, world, IdentityPreset.GENERIC)
        response = await desk.post(key, message(), **{"x-tokendesk-user-email": world.amy.email})
        assert response.status_code == 200, response.text
        await desk.gateway.settler.drain()
        assert (await balance_of(database, world.amy.id)).used == 24
        assert desk.upstream.anthropic_headers[0]["x-api-key"] == UPSTREAM_KEY

    async def test_an_integration_key_naming_nobody_is_a_bad_request(
        self, desk: Desk, world: World, database: Database
    ) -> None:
        key = await integration(database, world, IdentityPreset.GENERIC)
        refused(await desk.post(key, message()), 400, "invalid_request_error")

    async def test_chat_refusals_keep_openais_shape(self, desk: Desk, world: World) -> None:
        response = await desk.http.post(
            "/v1/chat/completions",
            json={"model": "claude", "messages": QUESTION},
            headers=world.alice.headers,
        )
        assert response.status_code == 400
        error = response.json()["error"]
        assert (error["type"], error["param"]) == ("invalid_request_error", "model")
        assert "does not speak the chat API" in error["message"]


def config(**values: object) -> Settings:
    return Settings(demo=True, **values)  # type: ignore[arg-type]


class TestAnthropicModels:
    def test_an_anthropic_model_speaks_messages_at_v1_messages_with_its_key_header(
        self,
    ) -> None:
        models = load_models(
            config(models='[{"name": "c", "api": "anthropic", "base_url": "https://a.test/"}]')
        )
        assert models["c"].apis == ["messages"]
        assert models["c"].upstream_base + "/messages" == "https://a.test/v1/messages"

    def test_an_openai_model_keeps_its_base(self) -> None:
        model = ModelConfig(name="g", base_url="http://h/v1", apis=["messages"])
        assert model.api == "openai" and model.upstream_base == "http://h/v1"

    @pytest.mark.parametrize(
        ("entry", "says"),
        [
            ({"api": "anthropic", "base_url": "https://a.test", "apis": ["chat"]}, "chat"),
            (
                {
                    "api": "anthropic",
                    "base_url": "https://a.test",
                    "apis": ["messages", "embeddings"],
                },
                "translates no API",
            ),
            ({"api": "anthropic"}, "no base_url"),
            ({"api": "gemini", "base_url": "https://a.test"}, "api"),
        ],
    )
    def test_a_misconfigured_anthropic_model_stops_start_up_naming_it(
        self, entry: dict[str, Any], says: str
    ) -> None:
        with pytest.raises(SystemExit) as stopped:
            load_models(config(models=json.dumps([{"name": "c", **entry}])))
        assert says in str(stopped.value)
