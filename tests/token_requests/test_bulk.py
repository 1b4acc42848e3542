"""Bulk approve and reject: POST /api/v1/token-requests/bulk and bulk.bulk."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.factories import World, make_world, snapshot
from tests.ledger_support import balance_of
from tests.token_requests.support import (
    actor_for,
    assert_ledger_consistent,
    counting_statements,
    decide,
    grants_for,
    members,
    submit,
)
from tokendesk.audit.models import AuditEntry
from tokendesk.db import Database, utcnow
from tokendesk.errors import Conflict, Forbidden, InvalidInput
from tokendesk.ledger import service as ledger
from tokendesk.token_requests import bulk
from tokendesk.token_requests import repository as repo

URL = "/api/v1/token-requests/bulk"


class TestBulkApprove:
    async def test_mixed_states_are_decided_or_skipped_with_a_reason(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        pending_alice = await submit(database, world.alice, amount=1_000)
        pending_bob = await submit(database, world.bob, amount=2_000)
        approved = await submit(database, world.amy, amount=3_000)
        await decide(database, world.admin, approved.id)
        cancelled = await submit(database, world.nora, amount=4_000)
        await decide(database, world.nora, cancelled.id, "cancel")
        own = await submit(database, world.admin, amount=5_000)
        other_org = await submit(database, world.oscar, amount=6_000)
        ids = [pending_alice.id, approved.id, cancelled.id, 999_999, other_org.id, own.id]
        ids.append(pending_bob.id)

        response = await client.post(
            URL, json={"action": "approve", "ids": ids}, headers=world.admin.headers
        )
        assert response.status_code == 200, response.text
        assert response.json() == {
            "decided": [pending_alice.id, pending_bob.id],
            "skipped": [
                {"id": approved.id, "reason": "already approved"},
                {"id": cancelled.id, "reason": "cancelled"},
                {"id": 999_999, "reason": "not found"},
                {"id": other_org.id, "reason": "not found"},
                {"id": own.id, "reason": "own request"},
            ],
        }
        assert (await balance_of(database, world.alice)).granted == 1_000
        assert (await balance_of(database, world.bob)).granted == 2_000
        assert (await balance_of(database, world.oscar)).granted == 0
        assert (await balance_of(database, world.admin)).granted == 0
        [grant] = await grants_for(database, pending_alice.id)
        assert (grant.amount, grant.actor_id) == (1_000, world.admin.id)
        assert grant.reason == f"token request {pending_alice.id} approved"
        await assert_ledger_consistent(database)

    async def test_decided_requests_read_back_as_approved_by_the_caller(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        request = await submit(database, world.alice, amount=1_000)
        response = await client.post(
            URL,
            json={"action": "approve", "ids": [request.id], "note": "quarter end"},
            headers=world.admin.headers,
        )
        assert response.status_code == 200, response.text
        body = (
            await client.get(f"/api/v1/token-requests/{request.id}", headers=world.admin.headers)
        ).json()
        assert (body["status"], body["approved_amount"]) == ("approved", 1_000)
        assert body["decided_by"] == {"id": world.admin.id, "name": "Admin"}
        assert body["decision_note"] == "quarter end"
        assert body["current_balance"] == 51_000
        [grant] = await grants_for(database, request.id)
        assert grant.reason == "quarter end"

    async def test_every_decision_is_audited_with_its_amounts(
        self, database: Database, world: World
    ) -> None:
        alice = await submit(database, world.alice, amount=1_000)
        bob = await submit(database, world.bob, amount=2_000)
        actor = await actor_for(database, world.admin)
        async with database.transaction() as s:
            await bulk.bulk(s, actor=actor, action="approve", ids=[alice.id, bob.id], note="ok")
        async with database.transaction(write=False) as s:
            rows = (
                await s.scalars(
                    select(AuditEntry)
                    .where(AuditEntry.action == "token_request.approved")
                    .order_by(AuditEntry.target_id)
                )
            ).all()
        assert [(r.target_id, r.actor_id, r.organization_id) for r in rows] == sorted(
            [
                (str(alice.id), world.admin.id, world.org_id),
                (str(bob.id), world.admin.id, world.org_id),
            ]
        )
        details = {r.target_id: r.details for r in rows}
        assert details[str(alice.id)] == {
            "note": "ok",
            "amount": 1_000,
            "requested": 1_000,
            "bulk": True,
        }

    async def test_a_team_owner_decides_only_their_teams_requests(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        alice = await submit(database, world.alice)
        bob = await submit(database, world.bob)
        response = await client.post(
            URL, json={"action": "approve", "ids": [alice.id, bob.id]}, headers=world.owner.headers
        )
        assert response.json() == {
            "decided": [alice.id],
            "skipped": [{"id": bob.id, "reason": "not found"}],
        }

    async def test_a_member_may_not_bulk_decide(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        request = await submit(database, world.amy)
        before = await snapshot(database)
        response = await client.post(
            URL, json={"action": "approve", "ids": [request.id]}, headers=world.alice.headers
        )
        assert response.status_code == 403
        assert await snapshot(database) == before

    async def test_a_super_admin_decides_in_the_chosen_organization(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        alice = await submit(database, world.alice)
        oscar = await submit(database, world.oscar)
        headers = {**world.root.headers, "X-Organization-Id": str(world.org_id)}
        response = await client.post(
            URL, json={"action": "approve", "ids": [alice.id, oscar.id]}, headers=headers
        )
        assert response.json() == {
            "decided": [alice.id],
            "skipped": [{"id": oscar.id, "reason": "not found"}],
        }

    async def test_bulk_grants_into_the_current_period_when_requests_are_older(
        self, database: Database, world: World
    ) -> None:
        alice = await submit(database, world.alice, amount=1_000)
        bob = await submit(database, world.bob, amount=2_000)
        later = utcnow() + timedelta(days=40)
        async with database.transaction() as s:
            await ledger.rollover_due(s, now=later, user_ids=[world.bob.id])
        actor = await actor_for(database, world.admin)
        async with database.transaction() as s:
            # Alice's period is rolled over by the bulk itself, Bob's was already.
            out = await bulk.bulk(
                s, actor=actor, action="approve", ids=[alice.id, bob.id], now=later
            )
        assert out.decided == [alice.id, bob.id]
        for person, request, amount in ((world.alice, alice, 1_000), (world.bob, bob, 2_000)):
            balance = await balance_of(database, person)
            assert balance.period_start > request.created_at
            assert balance.granted == amount
            [grant] = await grants_for(database, request.id)
            assert grant.period_start == balance.period_start
        await assert_ledger_consistent(database)

    async def test_the_statement_count_does_not_grow_with_the_batch(
        self, database: Database, world: World
    ) -> None:
        """Set-based: three requests and thirty take the same statements."""
        counts = []
        for size, prefix in ((3, "small"), (30, "large")):
            people = await members(database, world, size, prefix)
            ids = [(await submit(database, person)).id for person in people]
            actor = await actor_for(database, world.admin)
            with counting_statements(database) as statements:
                async with database.transaction() as s:
                    out = await bulk.bulk(s, actor=actor, action="approve", ids=ids)
            assert len(out.decided) == size
            counts.append(len(statements))
        assert counts[0] == counts[1]
        assert counts[1] <= 12
        await assert_ledger_consistent(database)

    async def test_requesters_are_rolled_over_in_chunks_and_all_granted(
        self, database: Database, world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(repo, "CHUNK", 2)
        people = await members(database, world, 5, "chunk")
        ids = [(await submit(database, p, amount=100 + i)).id for i, p in enumerate(people)]
        actor = await actor_for(database, world.admin)
        later = utcnow() + timedelta(days=40)
        async with database.transaction() as s:
            out = await bulk.bulk(s, actor=actor, action="approve", ids=[*ids, 999_999], now=later)
        assert out.decided == ids
        for i, (person, request_id) in enumerate(zip(people, ids, strict=True)):
            balance = await balance_of(database, person)
            assert (balance.granted, balance.period_end > later) == (100 + i, True)
            [grant] = await grants_for(database, request_id)
            assert grant.period_start == balance.period_start
        await assert_ledger_consistent(database)


class TestBulkReject:
    async def test_mixed_states_are_rejected_or_skipped_and_nothing_is_granted(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        alice = await submit(database, world.alice)
        rejected = await submit(database, world.amy)
        await decide(database, world.admin, rejected.id, "reject")
        own = await submit(database, world.admin)
        response = await client.post(
            URL,
            json={"action": "reject", "ids": [alice.id, rejected.id, own.id], "note": "budget"},
            headers=world.admin.headers,
        )
        assert response.json() == {
            "decided": [alice.id],
            "skipped": [
                {"id": rejected.id, "reason": "already rejected"},
                {"id": own.id, "reason": "own request"},
            ],
        }
        body = (
            await client.get(f"/api/v1/token-requests/{alice.id}", headers=world.admin.headers)
        ).json()
        assert (body["status"], body["decision_note"], body["approved_amount"]) == (
            "rejected",
            "budget",
            None,
        )
        assert await grants_for(database, alice.id) == []
        await assert_ledger_consistent(database)


class TestBulkPool:
    async def test_a_batch_beyond_the_pool_is_refused_whole_with_what_is_left(
        self, client: httpx.AsyncClient, database: Database
    ) -> None:
        world = await make_world(database, pool=355_000 + 5_000)
        first = await submit(database, world.alice, amount=3_000)
        second = await submit(database, world.bob, amount=3_000)
        before = await snapshot(database)
        response = await client.post(
            URL,
            json={"action": "approve", "ids": [first.id, second.id]},
            headers=world.admin.headers,
        )
        assert response.status_code == 409
        assert "5000 tokens left" in response.json()["detail"]
        assert await snapshot(database) == before

    async def test_a_batch_that_fits_the_pool_is_granted(self, database: Database) -> None:
        world = await make_world(database, pool=355_000 + 5_000)
        first = await submit(database, world.alice, amount=2_000)
        second = await submit(database, world.bob, amount=3_000)
        actor = await actor_for(database, world.admin)
        async with database.transaction() as s:
            out = await bulk.bulk(s, actor=actor, action="approve", ids=[first.id, second.id])
        assert out.decided == [first.id, second.id]
        third = await submit(database, world.amy, amount=1)
        with pytest.raises(Conflict, match="0 tokens left"):
            await decide(database, world.admin, third.id)
        await assert_ledger_consistent(database)

    async def test_skipped_requests_do_not_count_against_the_pool(self, database: Database) -> None:
        world = await make_world(database, pool=355_000 + 5_000)
        fits = await submit(database, world.alice, amount=5_000)
        own = await submit(database, world.admin, amount=900_000)
        actor = await actor_for(database, world.admin)
        async with database.transaction() as s:
            out = await bulk.bulk(s, actor=actor, action="approve", ids=[fits.id, own.id])
        assert out.decided == [fits.id]

    async def test_a_bulk_rejection_ignores_the_pool(self, database: Database) -> None:
        world = await make_world(database, pool=0)
        request = await submit(database, world.alice, amount=5_000)
        actor = await actor_for(database, world.admin)
        async with database.transaction() as s:
            out = await bulk.bulk(s, actor=actor, action="reject", ids=[request.id])
        assert out.decided == [request.id]


class TestBulkInput:
    @pytest.mark.parametrize(
        ("payload", "field"),
        [
            ({"action": "approve", "ids": []}, "ids"),
            ({"action": "approve", "ids": [1.5]}, "ids.0"),
            ({"action": "approve", "ids": ["10"]}, "ids.0"),
            ({"action": "approve", "ids": [True]}, "ids.0"),
            ({"action": "approve", "ids": [1, 1]}, "ids"),
            ({"action": "approve", "ids": list(range(1, 100_002))}, "ids"),
            ({"action": "approve", "ids": "1"}, "ids"),
            ({"action": "approve"}, "ids"),
            ({"action": "delete", "ids": [1]}, "action"),
            ({"ids": [1]}, "action"),
            ({"action": "approve", "ids": [1], "note": "n" * 1001}, "note"),
            ({"action": "approve", "ids": [1], "amount": 5}, "amount"),
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
        await submit(database, world.alice)
        before = await snapshot(database)
        response = await client.post(URL, json=payload, headers=world.admin.headers)
        assert response.status_code == 422
        assert response.json()["detail"].startswith(f"{field}:")
        assert await snapshot(database) == before

    async def test_the_service_refuses_bad_ids_and_actions_itself(
        self, database: Database, world: World
    ) -> None:
        actor = await actor_for(database, world.admin)
        before = await snapshot(database)
        for kwargs, field in [
            ({"action": "approve", "ids": []}, "ids"),
            ({"action": "approve", "ids": [1, 1]}, "ids"),
            ({"action": "approve", "ids": [True]}, "ids"),
            ({"action": "remove", "ids": [1]}, "action"),
            ({"action": "reject", "ids": [1], "note": "n" * 1001}, "note"),
        ]:
            with pytest.raises(InvalidInput) as caught:
                async with database.transaction() as s:
                    await bulk.bulk(s, actor=actor, **kwargs)
            assert caught.value.field == field
        assert await snapshot(database) == before

    async def test_the_service_refuses_a_member(self, database: Database, world: World) -> None:
        actor = await actor_for(database, world.alice)
        with pytest.raises(Forbidden):
            async with database.transaction() as s:
                await bulk.bulk(s, actor=actor, action="reject", ids=[1])


class TestImpossibleIds:
    async def test_ids_no_request_can_have_are_reported_as_not_found(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        pending = await submit(database, world.alice, amount=1_000)
        impossible = [2**63, 10**30, 0, -1]

        response = await client.post(
            URL,
            json={"action": "approve", "ids": [pending.id, *impossible]},
            headers=world.admin.headers,
        )

        assert response.status_code == 200, response.text
        assert response.json() == {
            "decided": [pending.id],
            "skipped": [{"id": i, "reason": "not found"} for i in impossible],
        }
        await assert_ledger_consistent(database)

    async def test_a_batch_of_only_impossible_ids_decides_nothing(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        before = await snapshot(database)
        response = await client.post(
            URL, json={"action": "reject", "ids": [2**63]}, headers=world.admin.headers
        )
        assert response.status_code == 200, response.text
        assert response.json() == {"decided": [], "skipped": [{"id": 2**63, "reason": "not found"}]}
        assert await snapshot(database) == before


class TestGrantCeiling:
    async def test_a_batch_that_would_take_granted_past_the_ceiling_is_refused_whole(
        self,
        client: httpx.AsyncClient,
        database: Database,
        world: World,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(bulk, "BALANCE_CEILING", 1_500)
        first = await submit(database, world.alice, amount=1_000)
        await decide(database, world.admin, first.id)
        over = await submit(database, world.alice, amount=1_000)
        fits = await submit(database, world.bob, amount=1_000)
        before = await snapshot(database)

        response = await client.post(
            URL, json={"action": "approve", "ids": [fits.id, over.id]}, headers=world.admin.headers
        )

        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == "ids"
        assert f"user {world.alice.id}'s granted tokens" in response.json()["detail"]
        assert await snapshot(database) == before
