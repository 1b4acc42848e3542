"""Approve, reject and cancel: every transition, valid and invalid."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest

from tests.factories import World, snapshot
from tests.ledger_support import balance_of
from tests.token_requests.support import (
    assert_ledger_consistent,
    audit_actions,
    count_grants,
    decide,
    grants_for,
    submit,
)
from tokendesk.db import Database, utcnow
from tokendesk.ledger import service as ledger
from tokendesk.token_requests.schemas import TokenRequestOut

URL = "/api/v1/token-requests"


async def _finished(database: Database, world: World, status: str) -> TokenRequestOut:
    request = await submit(database, world.alice, amount=1_000)
    if status == "approved":
        return await decide(database, world.admin, request.id, "approve")
    if status == "rejected":
        return await decide(database, world.admin, request.id, "reject")
    return await decide(database, world.alice, request.id, "cancel")


class TestApprove:
    async def test_approval_grants_the_requested_amount_by_default(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        request = await submit(database, world.alice, amount=1_000)
        response = await client.post(f"{URL}/{request.id}/approve", headers=world.admin.headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["status"], body["approved_amount"]) == ("approved", 1_000)
        assert body["decided_by"] == {"id": world.admin.id, "name": "Admin"}
        assert body["decided_at"] is not None
        assert body["current_balance"] == 51_000
        assert (await balance_of(database, world.alice)).granted == 1_000
        [grant] = await grants_for(database, request.id)
        assert (grant.amount, grant.actor_id) == (1_000, world.admin.id)
        assert grant.reason == f"token request {request.id} approved"
        assert await audit_actions(database, request.id) == [
            "token_request.created",
            "token_request.approved",
        ]
        await assert_ledger_consistent(database)

    async def test_an_admin_may_grant_another_amount_with_a_note(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        request = await submit(database, world.alice, amount=1_000)
        response = await client.post(
            f"{URL}/{request.id}/approve",
            json={"amount": 700, "note": "700 is enough for now"},
            headers=world.admin.headers,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["amount"], body["approved_amount"]) == (1_000, 700)
        assert body["decision_note"] == "700 is enough for now"
        assert body["current_balance"] == 50_700
        [grant] = await grants_for(database, request.id)
        assert (grant.amount, grant.reason) == (700, "700 is enough for now")
        await assert_ledger_consistent(database)

    async def test_an_approval_above_the_requested_amount_is_refused_naming_the_amount(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        request = await submit(database, world.alice, amount=1_000)
        before = await snapshot(database)
        response = await client.post(
            f"{URL}/{request.id}/approve", json={"amount": 1_001}, headers=world.admin.headers
        )
        assert response.status_code == 422
        assert response.json()["errors"] == [
            {
                "field": "amount",
                "message": "amount: must be at most the requested 1000 tokens; "
                "to give more, adjust the balance",
            }
        ]
        assert await snapshot(database) == before

    async def test_an_approval_of_exactly_the_requested_amount_is_granted(
        self, database: Database, world: World
    ) -> None:
        request = await submit(database, world.alice, amount=1_000)
        approved = await decide(database, world.admin, request.id, amount=1_000)
        assert approved.approved_amount == 1_000
        await assert_ledger_consistent(database)

    @pytest.mark.parametrize(
        ("payload", "field"),
        [
            ({"amount": 0}, "amount"),
            ({"amount": -1}, "amount"),
            ({"amount": 1.5}, "amount"),
            ({"amount": "10"}, "amount"),
            ({"amount": True}, "amount"),
            ({"amount": 1_000_001}, "amount"),
            ({"amount": 10**16}, "amount"),
            ({"note": "n" * 1001}, "note"),
            ({"amount": 10, "extra": 1}, "extra"),
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
        request = await submit(database, world.alice, amount=1_000)
        before = await snapshot(database)
        response = await client.post(
            f"{URL}/{request.id}/approve", json=payload, headers=world.admin.headers
        )
        assert response.status_code == 422
        assert response.json()["detail"].startswith(f"{field}:")
        assert await snapshot(database) == before

    @pytest.mark.parametrize("status", ["approved", "rejected", "cancelled"])
    async def test_only_a_pending_request_can_be_approved(
        self, client: httpx.AsyncClient, database: Database, world: World, status: str
    ) -> None:
        request = await _finished(database, world, status)
        before = await snapshot(database)
        response = await client.post(f"{URL}/{request.id}/approve", headers=world.admin.headers)
        assert response.status_code == 409
        assert response.json()["detail"] == f"token request {request.id} is already {status}"
        assert await snapshot(database) == before
        await assert_ledger_consistent(database)

    async def test_a_missing_request_is_not_found(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.post(f"{URL}/987654/approve", headers=world.admin.headers)
        assert response.status_code == 404

    async def test_approval_grants_into_the_current_period_when_the_request_is_older(
        self, database: Database, world: World
    ) -> None:
        request = await submit(database, world.alice, amount=2_000)
        later = utcnow() + timedelta(days=40)
        async with database.transaction() as s:
            assert await ledger.rollover_due(s, now=later) > 0
        approved = await decide(database, world.admin, request.id, now=later)
        balance = await balance_of(database, world.alice)
        assert balance.period_start > request.created_at
        assert balance.granted == 2_000
        assert approved.current_balance == 52_000
        [grant] = await grants_for(database, request.id)
        assert grant.period_start == balance.period_start
        await assert_ledger_consistent(database)

    async def test_an_approval_after_the_period_ended_rolls_the_balance_over_first(
        self, database: Database, world: World
    ) -> None:
        request = await submit(database, world.alice, amount=2_000)
        before = await balance_of(database, world.alice)
        later = before.period_end + timedelta(minutes=1)
        await decide(database, world.admin, request.id, now=later)
        balance = await balance_of(database, world.alice)
        assert balance.period_start == before.period_end
        assert (balance.allocation, balance.granted) == (50_000, 2_000)
        [grant] = await grants_for(database, request.id)
        assert grant.period_start == balance.period_start
        await assert_ledger_consistent(database)


class TestReject:
    async def test_rejection_records_the_note_and_grants_nothing(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        request = await submit(database, world.alice, amount=1_000)
        response = await client.post(
            f"{URL}/{request.id}/reject",
            json={"note": "not this month"},
            headers=world.admin.headers,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["status"], body["approved_amount"]) == ("rejected", None)
        assert body["decision_note"] == "not this month"
        assert body["decided_by"] == {"id": world.admin.id, "name": "Admin"}
        assert body["current_balance"] == 50_000
        assert await count_grants(database) == 0
        assert await audit_actions(database, request.id) == [
            "token_request.created",
            "token_request.rejected",
        ]
        await assert_ledger_consistent(database)

    async def test_rejection_needs_no_body(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        request = await submit(database, world.alice)
        response = await client.post(f"{URL}/{request.id}/reject", headers=world.admin.headers)
        assert response.status_code == 200, response.text
        assert response.json()["decision_note"] is None

    @pytest.mark.parametrize("status", ["approved", "rejected", "cancelled"])
    async def test_only_a_pending_request_can_be_rejected(
        self, client: httpx.AsyncClient, database: Database, world: World, status: str
    ) -> None:
        request = await _finished(database, world, status)
        before = await snapshot(database)
        response = await client.post(f"{URL}/{request.id}/reject", headers=world.admin.headers)
        assert response.status_code == 409
        assert response.json()["detail"] == f"token request {request.id} is already {status}"
        assert await snapshot(database) == before

    @pytest.mark.parametrize(
        ("payload", "field"),
        [({"note": "n" * 1001}, "note"), ({"note": 5}, "note"), ({"amount": 5}, "amount")],
    )
    async def test_bad_payload_is_refused_naming_the_field_and_changes_nothing(
        self,
        client: httpx.AsyncClient,
        database: Database,
        world: World,
        payload: dict[str, Any],
        field: str,
    ) -> None:
        request = await submit(database, world.alice)
        before = await snapshot(database)
        response = await client.post(
            f"{URL}/{request.id}/reject", json=payload, headers=world.admin.headers
        )
        assert response.status_code == 422
        assert response.json()["detail"].startswith(f"{field}:")
        assert await snapshot(database) == before


class TestCancel:
    async def test_the_requester_cancels_their_pending_request(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        request = await submit(database, world.alice)
        response = await client.post(f"{URL}/{request.id}/cancel", headers=world.alice.headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "cancelled"
        assert body["decided_by"] is None
        assert await audit_actions(database, request.id) == [
            "token_request.created",
            "token_request.cancelled",
        ]
        await assert_ledger_consistent(database)

    @pytest.mark.parametrize("status", ["approved", "rejected", "cancelled"])
    async def test_only_a_pending_request_can_be_cancelled(
        self, client: httpx.AsyncClient, database: Database, world: World, status: str
    ) -> None:
        request = await _finished(database, world, status)
        before = await snapshot(database)
        response = await client.post(f"{URL}/{request.id}/cancel", headers=world.alice.headers)
        assert response.status_code == 409
        assert response.json()["detail"] == f"token request {request.id} is already {status}"
        assert await snapshot(database) == before

    async def test_an_admin_cannot_cancel_someone_elses_request(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        request = await submit(database, world.alice)
        before = await snapshot(database)
        response = await client.post(f"{URL}/{request.id}/cancel", headers=world.admin.headers)
        assert response.status_code == 403
        assert await snapshot(database) == before

    async def test_another_member_cannot_even_see_the_request_to_cancel(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        request = await submit(database, world.alice)
        response = await client.post(f"{URL}/{request.id}/cancel", headers=world.amy.headers)
        assert response.status_code == 404

    async def test_a_non_numeric_id_is_refused_naming_request_id(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.post(f"{URL}/abc/cancel", headers=world.alice.headers)
        assert response.status_code == 422
        assert response.json()["detail"].startswith("request_id:")
