"""Each team's approvers: whom a team names hears of its new requests instead of its
owners; nobody named, the owners, else the org admins, as before."""

from __future__ import annotations

import httpx
import pytest

from tests.factories import Person, World, add_beta_owner
from tests.notifications.receivers import Mailbox
from tests.notifications.support import outbox
from tests.token_requests.support import submit
from tokendesk.db import Database
from tokendesk.notifications.worker import NotificationWorker

URL = "/api/v1/notifications/teams"


async def name(
    client: httpx.AsyncClient, world: World, team_id: int, user_ids: list[int]
) -> httpx.Response:
    return await client.put(
        f"{URL}/{team_id}/approvers", json={"user_ids": user_ids}, headers=world.admin.headers
    )


class TestTeamApprovers:
    async def test_named_approvers_hear_instead_of_the_owners(
        self,
        client: httpx.AsyncClient,
        database: Database,
        world: World,
        worker: NotificationWorker,
        mailbox: Mailbox,
    ) -> None:
        r = await name(client, world, world.team_a, [world.admin.id])
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["user_ids"] == [world.admin.id]
        assert [p["email"] for p in body["notified"]] == ["admin@example.com"]
        assert {p["email"] for p in body["eligible"]} == {"admin@example.com", "owner@example.com"}
        await submit(database, world.alice, amount=1_000)
        await worker.drain()
        assert mailbox.recipients() == ["admin@example.com"]

    async def test_an_empty_list_restores_the_owners(
        self,
        client: httpx.AsyncClient,
        database: Database,
        world: World,
        worker: NotificationWorker,
        mailbox: Mailbox,
    ) -> None:
        assert (await name(client, world, world.team_a, [world.admin.id])).status_code == 200
        r = await name(client, world, world.team_a, [])
        assert r.status_code == 200
        assert [p["email"] for p in r.json()["notified"]] == ["owner@example.com"]
        await submit(database, world.alice, amount=1_000)
        await worker.drain()
        assert mailbox.recipients() == ["owner@example.com"]

    async def test_another_team_keeps_its_own_rule(
        self,
        client: httpx.AsyncClient,
        database: Database,
        world: World,
        worker: NotificationWorker,
        mailbox: Mailbox,
    ) -> None:
        bea: Person = await add_beta_owner(database, world)
        assert (await name(client, world, world.team_a, [world.admin.id])).status_code == 200
        await submit(database, world.bob, amount=1_000)
        await worker.drain()
        assert mailbox.recipients() == [bea.email]

    async def test_a_named_approver_who_asks_is_not_told_of_their_own_request(
        self,
        client: httpx.AsyncClient,
        database: Database,
        world: World,
        worker: NotificationWorker,
        mailbox: Mailbox,
    ) -> None:
        assert (await name(client, world, world.team_a, [world.owner.id])).status_code == 200
        await submit(database, world.owner, amount=1_000)
        await worker.drain()
        assert mailbox.recipients() == ["admin@example.com"]

    @pytest.mark.parametrize(
        ("who", "field"),
        [("alice", "user_ids.0"), ("olga", "user_ids.1")],
    )
    async def test_only_people_who_may_decide_can_be_named(
        self, client: httpx.AsyncClient, database: Database, world: World, who: str, field: str
    ) -> None:
        ids = [getattr(world, who).id] if who == "alice" else [world.admin.id, world.olga.id]
        r = await name(client, world, world.team_a, ids)
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == field
        assert await outbox(database) == []
        got = await client.get(f"{URL}/{world.team_a}/approvers", headers=world.admin.headers)
        assert got.json()["user_ids"] == []

    async def test_a_repeated_person_is_refused(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        r = await name(client, world, world.team_a, [world.admin.id, world.admin.id])
        assert r.status_code == 422
        assert r.json()["errors"][0]["field"] == "user_ids"

    async def test_team_owners_and_other_organizations_may_not_set_them(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        body = {"user_ids": [world.owner.id]}
        own = await client.put(
            f"{URL}/{world.team_a}/approvers", json=body, headers=world.owner.headers
        )
        assert own.status_code == 403
        other = await client.put(
            f"{URL}/{world.team_a}/approvers", json=body, headers=world.olga.headers
        )
        assert other.status_code == 404
