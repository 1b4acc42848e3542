"""Submitting a token request: POST /api/v1/token-requests and decisions.submit."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.factories import World, snapshot
from tests.token_requests.support import (
    actor_for,
    assert_ledger_consistent,
    audit_actions,
    submit,
)
from tokendesk.db import Database
from tokendesk.errors import InvalidInput
from tokendesk.token_requests import decisions

URL = "/api/v1/token-requests"


class TestSubmit:
    async def test_member_submits_a_pending_request(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        response = await client.post(
            URL, json={"amount": 5_000, "reason": "quarterly report"}, headers=world.alice.headers
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert set(body) == {
            "id",
            "status",
            "amount",
            "approved_amount",
            "reason",
            "user",
            "team",
            "balance_at_request",
            "current_balance",
            "created_at",
            "decided_at",
            "decided_by",
            "decision_note",
            "decision_kind",
            "decided_by_rule",
        }
        assert body["status"] == "pending"
        assert (body["amount"], body["approved_amount"]) == (5_000, None)
        assert body["reason"] == "quarterly report"
        assert body["user"] == {"id": world.alice.id, "name": "Alice", "email": world.alice.email}
        assert body["team"] == {"id": world.team_a, "name": "Alpha"}
        assert (body["balance_at_request"], body["current_balance"]) == (50_000, 50_000)
        assert body["decided_at"] is None and body["decided_by"] is None
        assert await audit_actions(database, body["id"]) == ["token_request.created"]
        await assert_ledger_consistent(database)

    async def test_reason_is_optional_and_a_user_without_team_has_none(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.post(URL, json={"amount": 1}, headers=world.nora.headers)
        assert response.status_code == 201, response.text
        assert response.json()["reason"] is None
        assert response.json()["team"] is None
        assert response.json()["balance_at_request"] == 5_000

    async def test_second_pending_request_is_refused_naming_the_first(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        first = await submit(database, world.alice, amount=1_234)
        before = await snapshot(database)
        response = await client.post(URL, json={"amount": 10}, headers=world.alice.headers)
        assert response.status_code == 409
        assert f"#{first.id}" in response.json()["detail"]
        assert "1234 tokens" in response.json()["detail"]
        assert await snapshot(database) == before

    async def test_a_new_request_is_allowed_once_the_pending_one_is_cancelled(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        first = await submit(database, world.alice)
        cancel = await client.post(f"{URL}/{first.id}/cancel", headers=world.alice.headers)
        assert cancel.status_code == 200, cancel.text
        again = await client.post(URL, json={"amount": 10}, headers=world.alice.headers)
        assert again.status_code == 201, again.text

    async def test_other_users_may_each_have_a_pending_request(
        self, database: Database, world: World
    ) -> None:
        first = await submit(database, world.alice)
        second = await submit(database, world.amy)
        assert first.id != second.id

    async def test_amount_above_the_organization_maximum_is_refused(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        before = await snapshot(database)
        response = await client.post(URL, json={"amount": 1_000_001}, headers=world.alice.headers)
        assert response.status_code == 422
        assert response.json()["detail"] == "amount: must be at most 1000000"
        assert await snapshot(database) == before

    @pytest.mark.parametrize(
        ("payload", "field"),
        [
            ({"amount": 0}, "amount"),
            ({"amount": -5}, "amount"),
            ({"amount": 1.5}, "amount"),
            ({"amount": "10"}, "amount"),
            ({"amount": True}, "amount"),
            ({"amount": 10**16}, "amount"),
            ({}, "amount"),
            ({"amount": 10, "priority": "high"}, "priority"),
            ({"amount": 10, "reason": "x" * 1001}, "reason"),
        ],
    )
    async def test_bad_payload_is_refused_naming_the_field_and_changes_nothing(
        self,
        client: httpx.AsyncClient,
        database: Database,
        world: World,
        payload: dict[str, Any],
        field: str,
    ) -> None:
        before = await snapshot(database)
        response = await client.post(URL, json=payload, headers=world.alice.headers)
        assert response.status_code == 422
        assert response.json()["detail"].startswith(f"{field}:")
        assert await snapshot(database) == before

    async def test_a_reason_of_exactly_1000_characters_is_accepted(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.post(
            URL, json={"amount": 10, "reason": "x" * 1000}, headers=world.alice.headers
        )
        assert response.status_code == 201, response.text

    async def test_the_service_refuses_bad_amounts_and_reasons_itself(
        self, database: Database, world: World
    ) -> None:
        actor = await actor_for(database, world.alice)
        before = await snapshot(database)
        for kwargs, field in [
            ({"amount": 0}, "amount"),
            ({"amount": True}, "amount"),
            ({"amount": 2_000_000}, "amount"),
            ({"amount": 10, "reason": "y" * 1001}, "reason"),
        ]:
            with pytest.raises(InvalidInput) as caught:
                async with database.transaction() as s:
                    await decisions.submit(s, actor=actor, **kwargs)
            assert caught.value.field == field
        assert await snapshot(database) == before
