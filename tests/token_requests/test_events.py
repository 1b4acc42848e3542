"""Real-time events of the token-request workflow reach the bus only after commit."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.factories import World
from tests.ledger_support import balance_of
from tests.token_requests.support import actor_for, submit
from tokendesk.db import Database
from tokendesk.events.bus import Event, InProcessBus
from tokendesk.ledger import service as ledger
from tokendesk.token_requests import bulk, decisions


def drain(queue: asyncio.Queue[Event]) -> list[Event]:
    """The workflow's events; the server's own (``system``: the notification worker's
    wake-up) are left out."""
    events = []
    while not queue.empty():
        event = queue.get_nowait()
        if event.audience != "system":
            events.append(event)
    return events


class Rollback(Exception):
    pass


class TestPublishAfterCommit:
    async def test_an_approval_is_announced_only_once_committed(
        self, database: Database, world: World, bus: InProcessBus
    ) -> None:
        request = await submit(database, world.alice, amount=1_000)
        actor = await actor_for(database, world.admin)
        async with bus.subscribe() as queue:
            async with database.transaction() as s:
                await decisions.approve(s, actor=actor, request_id=request.id)
                assert queue.empty()
            events = drain(queue)
        by_type = {e.type: e for e in events}
        assert sorted(by_type) == ["balance.changed", "queue.changed", "request.updated"]
        updated = by_type["request.updated"]
        assert (updated.audience, updated.user_id) == ("user", world.alice.id)
        assert updated.data["change"] == "approved"
        assert updated.data["request"]["approved_amount"] == 1_000
        queue_changed = by_type["queue.changed"]
        assert (queue_changed.audience, queue_changed.team_id) == ("admins", world.team_a)
        assert queue_changed.organization_id == world.org_id
        assert queue_changed.data == {
            "change": "approved",
            "status": "approved",
            "request_id": request.id,
        }
        assert by_type["balance.changed"].data["remaining"] == 51_000

    @pytest.mark.parametrize("action", ["approve", "reject", "cancel", "submit", "bulk"])
    async def test_a_rolled_back_transaction_publishes_nothing(
        self, database: Database, world: World, action: str, bus: InProcessBus
    ) -> None:
        request = await submit(database, world.alice, amount=1_000)
        admin = await actor_for(database, world.admin)
        alice = await actor_for(database, world.alice)
        amy = await actor_for(database, world.amy)
        async with bus.subscribe() as queue:
            with pytest.raises(Rollback):
                async with database.transaction() as s:
                    if action == "submit":
                        await decisions.submit(s, actor=amy, amount=10)
                    elif action == "cancel":
                        await decisions.cancel(s, actor=alice, request_id=request.id)
                    elif action == "bulk":
                        await bulk.bulk(s, actor=admin, action="approve", ids=[request.id])
                    else:
                        await getattr(decisions, action)(s, actor=admin, request_id=request.id)
                    raise Rollback
            assert drain(queue) == []
        assert (await balance_of(database, world.alice)).granted == 0

    async def test_a_submission_tells_the_requester_and_the_queue(
        self, client: httpx.AsyncClient, database: Database, world: World, bus: InProcessBus
    ) -> None:
        async with bus.subscribe() as queue:
            response = await client.post(
                "/api/v1/token-requests", json={"amount": 10}, headers=world.bob.headers
            )
            events = drain(queue)
        body = response.json()
        assert [(e.type, e.audience) for e in events] == [
            ("request.updated", "user"),
            ("queue.changed", "admins"),
        ]
        assert events[0].data == {"request": body, "change": "created"}
        assert events[1].team_id == world.team_b
        assert events[1].data == {
            "change": "created",
            "status": "pending",
            "request_id": body["id"],
        }


class TestBulkEvents:
    async def test_each_requester_hears_about_their_request_and_balance(
        self, client: httpx.AsyncClient, database: Database, world: World, bus: InProcessBus
    ) -> None:
        alice = await submit(database, world.alice, amount=1_000)
        amy = await submit(database, world.amy, amount=2_000)
        bob = await submit(database, world.bob, amount=3_000)
        async with bus.subscribe() as queue:
            response = await client.post(
                "/api/v1/token-requests/bulk",
                json={"action": "approve", "ids": [alice.id, amy.id, bob.id], "note": "go"},
                headers=world.admin.headers,
            )
            assert response.status_code == 200, response.text
            events = drain(queue)

        updates = {e.user_id: e for e in events if e.type == "request.updated"}
        assert set(updates) == {world.alice.id, world.amy.id, world.bob.id}
        for person, request in ((world.alice, alice), (world.amy, amy), (world.bob, bob)):
            shown = await client.get(
                f"/api/v1/token-requests/{request.id}", headers=world.admin.headers
            )
            # The event carries exactly what the API returns for the request.
            assert updates[person.id].data == {"request": shown.json(), "change": "approved"}

        balances = {e.user_id: e for e in events if e.type == "balance.changed"}
        assert set(balances) == {world.alice.id, world.amy.id, world.bob.id}
        async with database.transaction(write=False) as s:
            for person in (world.alice, world.amy, world.bob):
                balance = await ledger.get_balance(s, user_id=person.id)
                expected = ledger.balance_event(balance, cause="grant")
                assert balances[person.id].data == expected.data
                assert balances[person.id].audience == "user"

        summaries = {e.team_id: e for e in events if e.type == "queue.changed"}
        assert set(summaries) == {world.team_a, world.team_b}
        assert summaries[world.team_a].audience == "admins"
        assert sorted(summaries[world.team_a].data["request_ids"]) == sorted([alice.id, amy.id])
        assert summaries[world.team_b].data["request_ids"] == [bob.id]

    async def test_a_bulk_rejection_tells_requesters_without_balance_events(
        self, database: Database, world: World, bus: InProcessBus
    ) -> None:
        alice = await submit(database, world.alice)
        actor = await actor_for(database, world.admin)
        async with bus.subscribe() as queue:
            async with database.transaction() as s:
                await bulk.bulk(s, actor=actor, action="reject", ids=[alice.id])
            events = drain(queue)
        assert sorted(e.type for e in events) == ["queue.changed", "request.updated"]
        [update] = [e for e in events if e.type == "request.updated"]
        assert update.data["request"]["status"] == "rejected"
        assert update.data["request"]["current_balance"] == 50_000
