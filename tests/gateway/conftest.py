from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from tests.fake_upstream import FakeUpstream, RunningServer
from tests.serving import serving
from tokendesk.app import create_app
from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.gateway.routes import Gateway


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
    models = [
        {"name": name, "base_url": f"{url}/v1", "api_key": "sk-upstream-secret"}
        for name in ("fast", "nousage", "error", "slow", "drop")
    ]
    models.append(
        {"name": "heavy", "base_url": f"{url}/v1", "upstream_model": "fast", "weight": 2.5}
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
