"""Usage is capped per event, and a period's sum has a ceiling: no run of batches overflows."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.factories import World, snapshot
from tests.ledger_support import balance_of
from tests.metering.helpers import assert_ledger_consistent
from tokendesk.bounds import MAX_EVENT_TOKENS
from tokendesk.db import Database
from tokendesk.metering import service

URL = "/api/v1/usage"


def event(event_id: str, user_id: int, prompt: int, completion: int = 0) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "user_id": user_id,
        "model": "gpt-4o",
        "prompt_tokens": prompt,
        "completion_tokens": completion,
    }


class TestEventCap:
    async def test_four_batches_of_a_quadrillion_tokens_are_refused_and_change_nothing(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        before = await snapshot(database)
        for n in range(4):
            body = {"events": [event(f"huge-{n}", world.alice.id, 10**15)]}
            response = await client.post(URL, json=body, headers=world.admin.headers)
            assert response.status_code == 422, response.text
            assert response.json()["errors"][0]["field"] == "events.0.prompt_tokens"
        assert await snapshot(database) == before

    async def test_the_cap_itself_is_recorded(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        body = {"events": [event("cap", world.alice.id, MAX_EVENT_TOKENS)]}
        response = await client.post(URL, json=body, headers=world.admin.headers)
        assert response.status_code == 200, response.text
        assert (await balance_of(database, world.alice.id)).used == MAX_EVENT_TOKENS
        await assert_ledger_consistent(database)

    async def test_prompt_and_completion_together_past_the_cap_are_refused(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        before = await snapshot(database)
        body = {"events": [event("pair", world.alice.id, MAX_EVENT_TOKENS, 1)]}
        response = await client.post(URL, json=body, headers=world.admin.headers)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == "events.0.completion_tokens"
        assert await snapshot(database) == before


class TestPeriodCeiling:
    async def test_an_event_that_would_take_used_past_the_ceiling_is_refused_naming_it(
        self,
        client: httpx.AsyncClient,
        database: Database,
        world: World,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(service, "BALANCE_CEILING", 250_000)
        first = {
            "events": [event("a", world.alice.id, 100_000), event("b", world.alice.id, 100_000)]
        }
        assert (await client.post(URL, json=first, headers=world.admin.headers)).status_code == 200
        before = await snapshot(database)

        second = {"events": [event("c", world.bob.id, 10), event("d", world.alice.id, 50_001)]}
        response = await client.post(URL, json=second, headers=world.admin.headers)

        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == "events.1"
        assert "used tokens this period past 250,000" in response.json()["detail"]
        assert await snapshot(database) == before
        fits = {"events": [event("e", world.alice.id, 50_000)]}
        assert (await client.post(URL, json=fits, headers=world.admin.headers)).status_code == 200
        assert (await balance_of(database, world.alice.id)).used == 250_000
        await assert_ledger_consistent(database)
