from __future__ import annotations

import httpx
import pytest

from tests.accounts.support import API, audit_rows, entries_of, ledger_is_consistent
from tests.factories import Person, World, snapshot
from tokendesk.bounds import MAX_TOKENS
from tokendesk.db import Database
from tokendesk.ledger import credits
from tokendesk.ledger.models import EntryKind


async def _adjust(
    client: httpx.AsyncClient, by: Person, target: Person, amount: int, note: str = "correction"
) -> httpx.Response:
    return await client.post(
        f"{API}/users/{target.id}/adjustments",
        headers=by.headers,
        json={"amount": amount, "note": note},
    )


class TestAdjustBalance:
    async def test_admin_adjusts_up_and_down_and_gets_the_new_balance(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        up = await _adjust(client, world.admin, world.bob, 2_500, "conference demo")
        down = await _adjust(client, world.admin, world.bob, -500, "double counted")
        assert (up.status_code, down.status_code) == (200, 200)
        assert down.json()["adjusted"] == 2_000
        assert down.json()["remaining"] == 102_000
        entries = await entries_of(database, world.bob.id, EntryKind.ADJUSTMENT)
        assert [(e.amount, e.reason, e.actor_id) for e in entries] == [
            (2_500, "conference demo", world.admin.id),
            (-500, "double counted", world.admin.id),
        ]
        rows = await audit_rows(database, "balance.adjusted")
        assert [r.details["amount"] for r in rows] == [2_500, -500]
        assert rows[0].details["note"] == "conference demo"
        assert await ledger_is_consistent(database)

    async def test_nobody_adjusts_their_own_balance(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        before = await snapshot(database)
        for person in (world.admin, world.owner, world.root):
            response = await _adjust(client, person, person, 1_000)
            assert response.status_code == 403
            assert "own balance" in response.json()["detail"]
        assert await snapshot(database) == before

    async def test_team_owner_adjusts_a_member_of_their_team(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await _adjust(client, world.owner, world.alice, 300)
        assert response.status_code == 200 and response.json()["remaining"] == 50_300

    async def test_out_of_scope_users_answer_404(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        before = await snapshot(database)
        assert (await _adjust(client, world.owner, world.bob, 300)).status_code == 404
        assert (await _adjust(client, world.olga, world.bob, 300)).status_code == 404
        assert await snapshot(database) == before

    async def test_member_is_refused_with_403(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        assert (await _adjust(client, world.alice, world.amy, 300)).status_code == 403


class TestUserLedger:
    async def test_entries_come_newest_first_with_actor_and_references(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        await _adjust(client, world.admin, world.bob, 700, "bonus")
        response = await client.get(
            f"{API}/users/{world.bob.id}/ledger", headers=world.admin.headers
        )
        assert response.status_code == 200
        body = response.json()
        assert body["total"] == 2
        newest, opened = body["items"]
        assert (newest["kind"], newest["amount"], newest["reason"]) == ("adjustment", 700, "bonus")
        assert newest["actor"] == {"id": world.admin.id, "name": "Admin"}
        assert newest["token_request_id"] is None and newest["usage_event_id"] is None
        assert (opened["kind"], opened["actor"]) == ("allocation", None)

    async def test_pages_keep_the_total(self, client: httpx.AsyncClient, world: World) -> None:
        for amount in (1, 2, 3):
            await _adjust(client, world.admin, world.bob, amount)
        response = await client.get(
            f"{API}/users/{world.bob.id}/ledger?limit=2&offset=2", headers=world.admin.headers
        )
        body = response.json()
        assert body["total"] == 4
        assert [e["amount"] for e in body["items"]] == [1, 100_000]

    async def test_members_read_their_own_ledger_but_nobody_elses(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        own = await client.get(f"{API}/users/{world.bob.id}/ledger", headers=world.bob.headers)
        other = await client.get(f"{API}/users/{world.amy.id}/ledger", headers=world.bob.headers)
        assert (own.status_code, other.status_code) == (200, 404)


class TestAdjustmentBounds:
    async def test_an_amount_past_the_documented_maximum_is_refused(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        before = await snapshot(database)
        for amount in (MAX_TOKENS + 1, -MAX_TOKENS - 1):
            response = await _adjust(client, world.admin, world.bob, amount)
            assert response.status_code == 422, response.text
            assert response.json()["errors"][0]["field"] == "amount"
        assert await snapshot(database) == before

    async def test_adjustments_that_would_add_up_past_the_ceiling_are_refused_either_way(
        self,
        client: httpx.AsyncClient,
        database: Database,
        world: World,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(credits, "BALANCE_CEILING", 5_000)
        assert (await _adjust(client, world.admin, world.bob, 4_000)).status_code == 200
        before = await snapshot(database)
        up = await _adjust(client, world.admin, world.bob, 1_001)
        assert up.status_code == 422, up.text
        assert up.json()["errors"][0]["field"] == "amount"
        assert "adjusted tokens this period past 5,000" in up.json()["detail"]
        assert await snapshot(database) == before
        assert (await _adjust(client, world.admin, world.bob, -9_000)).status_code == 200
        down = await _adjust(client, world.admin, world.bob, -1)
        assert down.status_code == 422, down.text
        assert await ledger_is_consistent(database)
