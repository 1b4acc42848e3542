"""Usage split by gateway endpoint, with its cached and reasoning tokens.

A few calls of March 2030 on each API (see ``record_calls``), beside the month the
conftest records through the usage API (which names no endpoint: ``reported``).
"""

from __future__ import annotations

from dataclasses import replace

import httpx
import pytest

from tests.analytics.conftest import NOW, Usage
from tests.analytics.support import actor_of, at, figure, record, rollup_differences, spend
from tests.analytics.test_http import MARCH, rows_of
from tests.factories import Person, World
from tests.web_admin.conftest import LoginFactory
from tokendesk.analytics import service
from tokendesk.db import Database
from tokendesk.errors import InvalidInput
from tokendesk.metering.service import UsageInput


def call(
    event_id: str,
    person: Person,
    endpoint: str,
    *,
    prompt: int,
    completion: int,
    cached: int = 0,
    reasoning: int = 0,
    model: str = "gpt-4o",
    debit: int | None = None,
) -> UsageInput:
    return replace(
        spend(event_id, person, 0, at(3, 12), model=model),
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        reasoning_tokens=reasoning,
        total_tokens=debit,
        endpoint=endpoint,
        source="gateway",
    )


@pytest.fixture
async def calls(database: Database, world: World, usage: Usage) -> Usage:
    await record(
        database,
        world.org_id,
        call("c1", world.alice, "chat", prompt=750, completion=250, cached=300),
        call("c2", world.bob, "chat", prompt=100, completion=100),
        # A priced model: debited 3,000 for 2,000 tokens.
        call("r1", world.bob, "responses", prompt=1500, completion=500, reasoning=200, debit=3000),
        call("e1", world.amy, "embeddings", prompt=600, completion=0),
        call(
            "g1",
            world.owner,
            "messages",
            prompt=300,
            completion=100,
            cached=100,
            reasoning=50,
            model="claude",
        ),
        now=NOW,
    )
    return usage


REPORTED = 11_600  # the conftest's month, all reported through the usage API


class TestByEndpoint:
    async def test_each_endpoint_sums_its_tokens_kinds_and_calls(
        self, database: Database, world: World, calls: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)

        out = await figure(database, admin, service.by_endpoint, now=NOW)

        assert [
            (e.endpoint, e.tokens, e.prompt_tokens, e.cached_tokens, e.completion_tokens,
             e.reasoning_tokens, e.calls)
            for e in out.items
        ] == [
            ("reported", REPORTED, REPORTED * 3 // 4, 0, REPORTED // 4, 0, 7),
            ("responses", 3000, 1500, 0, 500, 200, 1),
            ("chat", 1200, 850, 300, 350, 0, 2),
            ("embeddings", 600, 600, 0, 0, 0, 1),
            ("messages", 400, 300, 100, 100, 50, 1),
        ]  # fmt: skip
        assert [e.label for e in out.items][:2] == ["Reported by other apps", "Responses"]
        assert (out.total_tokens, out.total_calls) == (REPORTED + 5200, 12)
        assert (out.total_cached_tokens, out.total_reasoning_tokens) == (400, 250)
        assert await rollup_differences(database, world.org_id) == []

    async def test_a_team_owner_sees_the_endpoints_of_their_teams(
        self, database: Database, world: World, calls: Usage
    ) -> None:
        owner = await actor_of(database, world.owner)

        out = await figure(database, owner, service.by_endpoint, now=NOW)

        # Alpha: alice's chat, amy's embeddings, the owner's messages and their reports.
        assert {e.endpoint: e.tokens for e in out.items} == {
            "chat": 1000,
            "embeddings": 600,
            "messages": 400,
            "reported": 1800 + 2000 + 100,
        }

    async def test_the_model_filter_applies(
        self, database: Database, world: World, calls: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)

        out = await figure(database, admin, service.by_endpoint, now=NOW, model="claude")

        assert {e.endpoint: e.tokens for e in out.items} == {"messages": 400, "reported": 600}


class TestEndpointFilter:
    async def test_by_model_counts_only_that_endpoints_calls(
        self, database: Database, world: World, calls: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)

        out = await figure(database, admin, service.by_model, now=NOW, endpoint="chat")

        [gpt] = out.items
        assert (gpt.model, gpt.tokens, gpt.cached_tokens, gpt.calls) == ("gpt-4o", 1200, 300, 2)
        assert out.filters.endpoint == "chat"

    async def test_reported_selects_usage_the_usage_api_reported(
        self, database: Database, world: World, calls: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)

        out = await figure(database, admin, service.top_teams, now=NOW, endpoint="reported")

        assert {t.name: t.tokens for t in out.items} == {
            "Alpha": 1800 + 2000 + 100,
            "Beta": 3000,
            "No team": 4700,
        }

    async def test_usage_over_time_stacks_by_endpoint(
        self, database: Database, world: World, calls: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)

        out = await figure(
            database, admin, service.usage_over_time, now=NOW, stack="endpoint", period="current"
        )

        assert [(s.key, s.label, s.total) for s in out.series] == [
            ("reported", "Reported by other apps", REPORTED),
            ("responses", "Responses", 3000),
            ("chat", "Chat completions", 1200),
            ("embeddings", "Embeddings", 600),
            ("messages", "Messages", 400),
        ]
        assert out.totals[11] == 5200  # 12 March

    async def test_top_users_count_every_endpoint_and_say_so(
        self, database: Database, world: World, calls: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)

        out = await figure(database, admin, service.top_users, now=NOW, endpoint="chat")

        assert out.total_tokens == REPORTED + 5200
        assert out.filters.endpoint is None

    @pytest.mark.parametrize("endpoint", ["chats", "CHAT", "x" * 500, "images"])
    async def test_an_unknown_endpoint_is_refused_naming_the_field(
        self, database: Database, world: World, endpoint: str
    ) -> None:
        admin = await actor_of(database, world.admin)

        with pytest.raises(InvalidInput, match=r"^endpoint: must be one of chat, responses"):
            await figure(database, admin, service.by_endpoint, now=NOW, endpoint=endpoint)


class TestHttp:
    async def test_by_endpoint_answers_json(
        self, client: httpx.AsyncClient, world: World, calls: Usage
    ) -> None:
        response = await client.get(
            f"/api/v1/analytics/by-endpoint?{MARCH}&endpoint=messages",
            headers=world.admin.headers,
        )

        assert response.status_code == 200, response.text
        body = response.json()
        assert body["filters"]["endpoint"] == "messages"
        assert [(e["endpoint"], e["tokens"], e["cached_tokens"]) for e in body["items"]] == [
            ("messages", 400, 100)
        ]

    @pytest.mark.parametrize("path", ["by-endpoint", "by-model", "usage-over-time"])
    async def test_a_bad_endpoint_answers_422_naming_it(
        self, client: httpx.AsyncClient, world: World, path: str
    ) -> None:
        response = await client.get(
            f"/api/v1/analytics/{path}?endpoint=fax", headers=world.admin.headers
        )

        assert response.status_code == 422
        assert response.json()["detail"].startswith("endpoint: ")

    async def test_by_endpoint_exports_csv(
        self, client: httpx.AsyncClient, world: World, calls: Usage
    ) -> None:
        response = await client.get(
            f"/api/v1/analytics/by-endpoint.csv?{MARCH}&team_id={world.team_b}",
            headers=world.admin.headers,
        )

        assert response.status_code == 200
        assert rows_of(response) == [
            ["endpoint", "label", "tokens", "prompt_tokens", "completion_tokens",
             "cached_tokens", "reasoning_tokens", "calls", "share_of_tokens"],
            ["reported", "Reported by other apps", "3000", "2250", "750", "0", "0", "1", "0.4839"],
            ["responses", "Responses", "3000", "1500", "500", "0", "200", "1", "0.4839"],
            ["chat", "Chat completions", "200", "100", "100", "0", "0", "1", "0.0323"],
        ]  # fmt: skip

    async def test_the_page_shows_the_breakdown_and_filters_by_endpoint(
        self, world: World, calls: Usage, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)

        page = await admin.get(f"/admin/analytics?{MARCH}")
        chat = await admin.get(f"/admin/analytics?{MARCH}&endpoint=chat&stack=endpoint")

        assert page.status_code == 200 and 'id="by-endpoint-table"' in page.text
        assert '<div class="value" id="figure-tokens">16,800</div>' in page.text
        assert '<option value="chat" selected>' in chat.text
        assert '<div class="value" id="figure-tokens">1,200</div>' in chat.text
        assert "top consumers and the forecast count every endpoint" in chat.text
        assert 'value="endpoint" checked' in chat.text
