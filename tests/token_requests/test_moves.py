"""A pending request follows its requester's current team: after a move, the new
team's owners see and decide it, and the old team's owners no longer do."""

from __future__ import annotations

import httpx
import pytest

from tests.factories import Person, World, add_beta_owner, snapshot
from tests.token_requests.support import actor_for, submit
from tokendesk.accounts.lookups import get_organization
from tokendesk.accounts.models import User
from tokendesk.db import Database, utcnow
from tokendesk.events.bus import InProcessBus
from tokendesk.token_requests import repository as repo
from tokendesk.token_requests import service
from tokendesk.token_requests import transitions_repository as transitions
from tokendesk.token_requests.models import RequestStatus

URL = "/api/v1/token-requests"


@pytest.fixture
async def beta_owner(database: Database, world: World) -> Person:
    return await add_beta_owner(database, world)


async def _move(client: httpx.AsyncClient, world: World, person: Person, team_id: int) -> None:
    response = await client.patch(
        f"/api/v1/users/{person.id}", headers=world.admin.headers, json={"team_id": team_id}
    )
    assert response.status_code == 200, response.text


async def _pending_ids(client: httpx.AsyncClient, person: Person, **params: object) -> list[int]:
    response = await client.get(URL, headers=person.headers, params={"status": "pending", **params})
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


async def _pending_count(client: httpx.AsyncClient, person: Person) -> int:
    response = await client.get(f"{URL}/pending-count", headers=person.headers)
    assert response.status_code == 200, response.text
    return int(response.json()["count"])


class TestListingAfterAMove:
    async def test_the_new_teams_owner_sees_the_request_and_the_old_ones_do_not(
        self, client: httpx.AsyncClient, database: Database, world: World, beta_owner: Person
    ) -> None:
        request = await submit(database, world.alice)
        assert await _pending_ids(client, world.owner) == [request.id]
        await _move(client, world, world.alice, world.team_b)
        assert await _pending_ids(client, world.owner) == []
        assert await _pending_ids(client, beta_owner) == [request.id]
        shown = await client.get(f"{URL}/{request.id}", headers=beta_owner.headers)
        assert shown.json()["team"] == {"id": world.team_b, "name": "Beta"}
        hidden = await client.get(f"{URL}/{request.id}", headers=world.owner.headers)
        assert hidden.status_code == 404

    async def test_counts_and_the_badge_follow_the_move(
        self, client: httpx.AsyncClient, database: Database, world: World, beta_owner: Person
    ) -> None:
        await submit(database, world.alice)
        await _move(client, world, world.alice, world.team_b)
        assert await _pending_count(client, world.owner) == 0
        assert await _pending_count(client, beta_owner) == 1
        counts = await client.get(f"{URL}/counts", headers=world.owner.headers)
        assert counts.json()["pending"] == 0
        counts = await client.get(f"{URL}/counts", headers=beta_owner.headers)
        assert counts.json()["pending"] == 1

    async def test_the_team_filter_finds_a_pending_request_under_its_new_team(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        request = await submit(database, world.alice)
        await _move(client, world, world.alice, world.team_b)
        assert await _pending_ids(client, world.admin, team_id=world.team_b) == [request.id]
        assert await _pending_ids(client, world.admin, team_id=world.team_a) == []

    async def test_the_move_tells_both_teams_queues(
        self, client: httpx.AsyncClient, database: Database, world: World, bus: InProcessBus
    ) -> None:
        request = await submit(database, world.alice)
        async with bus.subscribe() as queue:
            await _move(client, world, world.alice, world.team_b)
            events = [queue.get_nowait() for _ in range(queue.qsize())]
        moved = [e for e in events if e.type == "queue.changed"]
        assert sorted(e.team_id for e in moved) == sorted([world.team_a, world.team_b])
        assert all(e.data["request_id"] == request.id for e in moved)


class TestDecisionsAfterAMove:
    async def test_the_old_teams_owner_can_no_longer_decide_it(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        request = await submit(database, world.alice)
        await _move(client, world, world.alice, world.team_b)
        before = await snapshot(database)
        for action in ("approve", "reject"):
            response = await client.post(
                f"{URL}/{request.id}/{action}", headers=world.owner.headers
            )
            assert response.status_code == 404, response.text
        assert await snapshot(database) == before

    async def test_the_new_teams_owner_decides_it_and_the_decision_keeps_that_team(
        self, client: httpx.AsyncClient, database: Database, world: World, beta_owner: Person
    ) -> None:
        request = await submit(database, world.alice)
        await _move(client, world, world.alice, world.team_b)
        response = await client.post(f"{URL}/{request.id}/approve", headers=beta_owner.headers)
        assert response.status_code == 200, response.text
        assert response.json()["team"]["id"] == world.team_b
        # Decided, the request is history: moving Alice back does not carry it along.
        await _move(client, world, world.alice, world.team_a)
        all_of_beta = await client.get(URL, headers=beta_owner.headers)
        assert [item["id"] for item in all_of_beta.json()["items"]] == [request.id]
        all_of_alpha = await client.get(URL, headers=world.owner.headers)
        assert request.id not in [item["id"] for item in all_of_alpha.json()["items"]]

    async def test_bulk_decisions_follow_the_move(
        self, client: httpx.AsyncClient, database: Database, world: World, beta_owner: Person
    ) -> None:
        alice = await submit(database, world.alice)
        amy = await submit(database, world.amy)
        await _move(client, world, world.alice, world.team_b)
        body = {"action": "approve", "ids": [alice.id, amy.id]}
        old = await client.post(f"{URL}/bulk", headers=world.owner.headers, json=body)
        assert old.status_code == 200, old.text
        assert old.json()["decided"] == [amy.id]
        assert old.json()["skipped"] == [{"id": alice.id, "reason": "not found"}]
        new = await client.post(f"{URL}/bulk", headers=beta_owner.headers, json=body)
        assert new.json()["decided"] == [alice.id]
        assert new.json()["skipped"] == [{"id": amy.id, "reason": "not found"}]

    async def test_select_all_matching_follows_the_move(
        self, database: Database, world: World, beta_owner: Person, client: httpx.AsyncClient
    ) -> None:
        request = await submit(database, world.alice)
        await _move(client, world, world.alice, world.team_b)
        async with database.transaction(write=False) as s:
            old = await service.matching_pending(s, actor=await actor_for(database, world.owner))
            new = await service.matching_pending(s, actor=await actor_for(database, beta_owner))
        assert (old.ids, new.ids) == ([], [request.id])


@pytest.mark.usefixtures("postgres_only")
class TestAMoveRacingADecision:
    async def test_a_move_committed_after_the_old_owners_read_stops_their_decision(
        self, database: Database, world: World
    ) -> None:
        request = await submit(database, world.alice)
        owner = await actor_for(database, world.owner)
        now = utcnow()
        async with database.transaction() as deciding:
            org = await get_organization(deciding, world.org_id)
            seen = await repo.items_by_ids(
                deciding, scope=service.scope_for(owner), ids=[request.id], now=now, org=org
            )
            assert [row.id for row in seen] == [request.id]
            # Another connection moves Alice and commits while the decision is under way.
            async with database.transaction() as moving:
                alice = await moving.get(User, world.alice.id)
                assert alice is not None
                alice.team_id = world.team_b
            changed = await transitions.transition(
                deciding,
                ids=[request.id],
                to=RequestStatus.APPROVED,
                now=now,
                decided_by_id=owner.user_id,
                within_teams=service.deciding_teams(owner),
            )
            assert changed == []
