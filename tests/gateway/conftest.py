from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from tests.factories import Person
from tests.fake_upstream import FakeUpstream, RunningServer
from tests.ledger_support import balance_of
from tests.serving import serving
from tokendesk.app import create_app
from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.gateway.routes import Gateway
from tokendesk.metering.models import UsageEvent

# The "priced" model's weights per token kind: output four times input, cache hits a quarter.
PRICED = {"input": 1.0, "output": 4.0, "cached_input": 0.25}


@dataclass
class Harness:
    http: httpx.AsyncClient
    gateway: Gateway
    upstream: FakeUpstream

    async def settled(self) -> None:
        await self.gateway.settler.drain()
        await self.gateway.overruns.drain()


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[FakeUpstream, str]]:
    fake = FakeUpstream()
    async with RunningServer(fake) as server:
        yield fake, server.url


@pytest.fixture
async def harness(
    request: pytest.FixtureRequest,
    database: Database,
    db_url: str,
    upstream: tuple[FakeUpstream, str],
) -> AsyncIterator[Harness]:
    """The gateway before the fake upstream; ``indirect`` parameters override settings."""
    fake, url = upstream
    both = ["chat", "embeddings"]
    models = [
        {"name": name, "base_url": f"{url}/v1", "api_key": "sk-upstream-secret", "apis": both}
        for name in ("fast", "nousage", "error", "slow", "drop")
    ]
    models.append(
        {
            "name": "heavy",
            "base_url": f"{url}/v1",
            "upstream_model": "fast",
            "weight": 2.5,
            "apis": both,
        }
    )
    models.append(
        {
            "name": "priced",
            "base_url": f"{url}/v1",
            "upstream_model": "fast",
            "weights": PRICED,
            "apis": both,
        }
    )
    models.append(
        {
            "name": "embedder",
            "base_url": f"{url}/v1",
            "upstream_model": "fast",
            "apis": ["embeddings"],
        }
    )
    models.append(
        {
            "name": "modern",
            "base_url": f"{url}/v1",
            "upstream_model": "fast",
            "max_tokens_field": "max_completion_tokens",
        }
    )
    models.append(
        {
            "name": "single",
            "base_url": f"{url}/v1",
            "upstream_model": "fast",
            "allow_n": False,
            "max_output_tokens": 500,
        }
    )
    settings = Settings(
        database_url=db_url,
        demo=True,
        scheduler_enabled=False,
        models=json.dumps(models),
        upstream_timeout_seconds=0.5,
        gateway_default_max_tokens=100,
        **getattr(request, "param", {}),
    )
    app = create_app(settings, database=database)
    transport = httpx.ASGITransport(app=app)
    async with (
        serving(app) as runtime,
        httpx.AsyncClient(transport=transport, base_url="http://test") as http,
    ):
        yield Harness(http, runtime.gateway, fake)


# -- a live tokendesk for the official SDKs on every API the gateway serves ------------

EVERY_API = ["chat", "responses", "embeddings", "completions"]


@dataclass
class Live:
    url: str
    upstream: FakeUpstream
    app: Any

    @property
    def gateway(self) -> Any:
        return self.app.state.runtime.gateway

    async def settled(self) -> None:
        await self.gateway.settler.drain()
        await self.gateway.overruns.drain()

    def client(self, person: Person) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=person.key, max_retries=0)

    def http(self, person: Person) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=person.headers, timeout=10)


@pytest.fixture
async def live(
    database: Database, db_url: str, upstream: tuple[FakeUpstream, str]
) -> AsyncIterator[Live]:
    fake, url = upstream
    models: list[dict[str, Any]] = [
        {"name": name, "base_url": f"{url}/v1", "apis": EVERY_API}
        for name in ("fast", "nousage", "error", "drop")
    ]
    models.append({"name": "chatonly", "base_url": f"{url}/v1", "upstream_model": "fast"})
    models.append({"name": "demo", "apis": EVERY_API})
    app = create_app(
        Settings(
            database_url=db_url,
            demo=True,
            scheduler_enabled=False,
            models=json.dumps(models),
            upstream_timeout_seconds=2,
        ),
        database=database,
    )
    async with RunningServer(app) as server:
        yield Live(server.url, fake, app)


async def charged(database: Database, user_id: int) -> int:
    balance = await balance_of(database, user_id)
    assert balance.reserved == 0, "nothing may stay held"
    return balance.used


async def events(database: Database) -> list[tuple[Any, ...]]:
    async with database.transaction(write=False) as s:
        rows = await s.execute(
            select(
                UsageEvent.endpoint,
                UsageEvent.prompt_tokens,
                UsageEvent.completion_tokens,
                UsageEvent.cached_tokens,
                UsageEvent.reasoning_tokens,
            )
        )
        return [tuple(row) for row in rows]
