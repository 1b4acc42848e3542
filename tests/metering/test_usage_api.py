from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.factories import World, snapshot
from tests.ledger_support import balance_of
from tests.metering.helpers import assert_ledger_consistent
from tokendesk.accounts.models import ApiKey
from tokendesk.db import Database
from tokendesk.metering.models import UsageEvent


def event(event_id: str, email: str, tokens: int = 100, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "user_email": email,
        "model": "gpt-4o",
        "prompt_tokens": tokens - tokens // 4,
        "completion_tokens": tokens // 4,
        **extra,
    }


class TestPostUsage:
    async def test_admin_reports_a_batch_and_gets_each_users_resulting_balance(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        response = await client.post(
            "/api/v1/usage",
            headers=world.admin.headers,
            json={
                "events": [
                    event("e1", "alice@example.com", 1_000),
                    {**event("e2", "", 500), "user_email": None, "user_id": world.bob.id},
                    event("e3", "ALICE@example.com", 2_000, source="librechat"),
                ]
            },
        )

        assert response.status_code == 200, response.text
        assert response.json() == {
            "results": [
                {"event_id": "e1", "user_id": world.alice.id, "total_tokens": 1_000,
                 "remaining": 49_000, "replayed": False},
                {"event_id": "e2", "user_id": world.bob.id, "total_tokens": 500,
                 "remaining": 99_500, "replayed": False},
                {"event_id": "e3", "user_id": world.alice.id, "total_tokens": 2_000,
                 "remaining": 47_000, "replayed": False},
            ]
        }  # fmt: skip
        await assert_ledger_consistent(database)

    async def test_a_retried_batch_is_marked_replayed_and_charges_nothing(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        body = {"events": [event("e1", "alice@example.com", 1_000)]}
        first = await client.post("/api/v1/usage", headers=world.admin.headers, json=body)

        again = await client.post("/api/v1/usage", headers=world.admin.headers, json=body)

        assert again.status_code == 200
        assert again.json()["results"] == [{**first.json()["results"][0], "replayed": True}]
        assert (await balance_of(database, world.alice.id)).used == 1_000

    async def test_overspent_balance_is_shown_as_negative(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.post(
            "/api/v1/usage",
            headers=world.admin.headers,
            json={"events": [event("big", "nora@example.com", 8_000)]},
        )

        assert response.json()["results"][0]["remaining"] == -3_000

    async def test_super_admin_reports_into_the_organization_they_switched_to(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        response = await client.post(
            "/api/v1/usage",
            headers={**world.root.headers, "X-Organization-Id": str(world.org_id)},
            json={"events": [event("e1", "bob@example.com", 10)]},
        )

        assert response.status_code == 200, response.text
        assert (await balance_of(database, world.bob.id)).used == 10

    async def test_batches_posted_at_once_are_each_answered_with_their_own_results(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        people = ["alice", "bob", "amy", "nora"]
        responses = await asyncio.gather(
            *(
                client.post(
                    "/api/v1/usage",
                    headers=world.admin.headers,
                    json={
                        "events": [event(f"{name}-{n}", f"{name}@example.com") for n in range(5)]
                    },
                )
                for name in people
            )
        )
        for name, response in zip(people, responses, strict=True):
            assert response.status_code == 200, response.text
            results = response.json()["results"]
            assert [r["event_id"] for r in results] == [f"{name}-{n}" for n in range(5)]
            assert {r["user_id"] for r in results} == {world.people[name].id}
            assert (await balance_of(database, world.people[name].id)).used == 500
        await assert_ledger_consistent(database)

    async def test_the_reporting_key_is_stamped_as_used(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        body = {"events": [event("e1", "bob@example.com", 10)]}
        response = await client.post("/api/v1/usage", headers=world.admin.headers, json=body)
        assert response.is_success
        async with database.transaction(write=False) as s:
            stamps = await s.scalars(
                select(ApiKey.last_used_at).where(ApiKey.user_id == world.admin.id)
            )
            [stamp] = stamps.all()
            assert stamp is not None

    async def test_cached_and_reasoning_tokens_are_recorded_and_default_to_none(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        events = [
            event("kinds", "bob@example.com", 100, cached_tokens=75, reasoning_tokens=20),
            event("plain", "bob@example.com", 100),
        ]
        response = await client.post(
            "/api/v1/usage", headers=world.admin.headers, json={"events": events}
        )
        assert response.status_code == 200, response.text
        # The parts are recorded; the debit is the reporter's prompt plus completion.
        assert [r["total_tokens"] for r in response.json()["results"]] == [100, 100]
        async with database.transaction(write=False) as s:
            rows = (
                await s.execute(
                    select(
                        UsageEvent.event_id, UsageEvent.cached_tokens, UsageEvent.reasoning_tokens
                    ).order_by(UsageEvent.event_id)
                )
            ).all()
        assert [tuple(row) for row in rows] == [("kinds", 75, 20), ("plain", 0, 0)]


class TestPostUsageRefusals:
    @pytest.mark.parametrize("who", ["alice", "owner"])
    async def test_member_and_team_owner_keys_are_forbidden(
        self, client: httpx.AsyncClient, database: Database, world: World, who: str
    ) -> None:
        before = await snapshot(database)

        response = await client.post(
            "/api/v1/usage",
            headers=world.people[who].headers,
            json={"events": [event("e1", f"{who}@example.com")]},
        )

        assert response.status_code == 403
        assert await snapshot(database) == before

    async def test_missing_key_is_unauthorized(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.post(
            "/api/v1/usage", json={"events": [event("e1", "alice@example.com")]}
        )

        assert response.status_code == 401

    @pytest.mark.parametrize(
        ("bad", "field"),
        [
            ({"prompt_tokens": -1}, "events.3.prompt_tokens"),
            ({"completion_tokens": 1.5}, "events.3.completion_tokens"),
            ({"prompt_tokens": "10"}, "events.3.prompt_tokens"),
            ({"completion_tokens": True}, "events.3.completion_tokens"),
            ({"prompt_tokens": 10**16}, "events.3.prompt_tokens"),
            ({"cached_tokens": -1}, "events.3.cached_tokens"),
            ({"cached_tokens": "3"}, "events.3.cached_tokens"),
            ({"cached_tokens": True}, "events.3.cached_tokens"),
            ({"reasoning_tokens": 2.5}, "events.3.reasoning_tokens"),
            ({"reasoning_tokens": 10**16}, "events.3.reasoning_tokens"),
            # Parts of the input and of the output: never more than their whole.
            ({"cached_tokens": 76}, "events.3.cached_tokens"),
            ({"reasoning_tokens": 26}, "events.3.reasoning_tokens"),
            ({"event_id": ""}, "events.3.event_id"),
            ({"event_id": "x" * 201}, "events.3.event_id"),
            ({"model": ""}, "events.3.model"),
            ({"source": "s" * 51}, "events.3.source"),
            ({"occurred_at": "2030-01-01T00:00:00"}, "events.3.occurred_at"),
            ({"occurred_at": "yesterday"}, "events.3.occurred_at"),
            ({"colour": "blue"}, "events.3.colour"),
            ({"user_email": "ghost@example.com"}, "events.3.user_email"),
            ({"user_email": "olga@example.com"}, "events.3.user_email"),
            ({"user_email": None}, "events.3.user_id"),
            ({"user_id": 1}, "events.3.user_id"),
        ],
    )
    async def test_one_bad_event_refuses_the_whole_batch_naming_it(
        self,
        client: httpx.AsyncClient,
        database: Database,
        world: World,
        bad: dict[str, Any],
        field: str,
    ) -> None:
        events = [event(f"ok{i}", "alice@example.com") for i in range(5)]
        events[3] = {**events[3], **bad}
        before = await snapshot(database)

        response = await client.post(
            "/api/v1/usage", headers=world.admin.headers, json={"events": events}
        )

        assert response.status_code == 422, response.text
        assert field in [error["field"] for error in response.json()["errors"]]
        assert field in response.json()["detail"]
        assert await snapshot(database) == before

    async def test_occurred_at_more_than_five_minutes_ahead_is_refused(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        ahead = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
        before = await snapshot(database)

        response = await client.post(
            "/api/v1/usage",
            headers=world.admin.headers,
            json={"events": [event("e1", "alice@example.com", occurred_at=ahead)]},
        )

        assert response.status_code == 422
        assert response.json()["errors"][0]["field"] == "events.0.occurred_at"
        assert await snapshot(database) == before

    async def test_user_id_of_another_organization_is_refused(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        before = await snapshot(database)
        oscar = {**event("e1", "", 10), "user_email": None, "user_id": world.oscar.id}

        response = await client.post(
            "/api/v1/usage", headers=world.admin.headers, json={"events": [oscar]}
        )

        assert response.status_code == 422
        assert response.json()["errors"][0]["field"] == "events.0.user_id"
        assert await snapshot(database) == before

    async def test_every_unknown_email_is_named(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        events = [
            event("a", "ghost@example.com"),
            event("b", "alice@example.com"),
            event("c", "oscar@example.com"),
        ]

        response = await client.post(
            "/api/v1/usage", headers=world.admin.headers, json={"events": events}
        )

        assert response.status_code == 422
        detail = response.json()["detail"]
        assert "events.0.user_email" in detail
        assert "events.2.user_email" in detail

    @pytest.mark.parametrize("count", [0, 1001])
    async def test_batch_must_hold_one_to_a_thousand_events(
        self, client: httpx.AsyncClient, world: World, count: int
    ) -> None:
        events = [event(f"e{i}", "alice@example.com") for i in range(count)]

        response = await client.post(
            "/api/v1/usage", headers=world.admin.headers, json={"events": events}
        )

        assert response.status_code == 422
        assert response.json()["errors"][0]["field"] == "events"

    async def test_unknown_top_level_field_is_refused(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.post(
            "/api/v1/usage",
            headers=world.admin.headers,
            json={"events": [event("e1", "alice@example.com")], "dry_run": True},
        )

        assert response.status_code == 422
        assert response.json()["errors"][0] == {"field": "dry_run", "message": "unknown field"}
