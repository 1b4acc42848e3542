from __future__ import annotations

from typing import Any

import httpx

from tests.accounts.support import (
    API,
    PASSWORD,
    acting_in,
    audit_rows,
    open_sessions,
    sign_in,
    user_of,
)
from tests.factories import Person, World, snapshot
from tokendesk.accounts.models import Role, TeamOwner
from tokendesk.accounts.users import create_user
from tokendesk.db import Database


async def _patch(
    client: httpx.AsyncClient, by: Person | dict[str, str], target: Person, body: dict[str, Any]
) -> httpx.Response:
    headers = by if isinstance(by, dict) else by.headers
    return await client.patch(f"{API}/users/{target.id}", headers=headers, json=body)


class TestUpdateUser:
    async def test_org_admin_renames_and_the_audit_row_holds_before_and_after(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        response = await _patch(client, world.admin, world.bob, {"name": "Robert"})
        assert response.status_code == 200 and response.json()["name"] == "Robert"
        (row,) = await audit_rows(database, "user.updated")
        assert row.details == {"before": {"name": "Bob"}, "after": {"name": "Robert"}}
        assert (row.actor_id, row.target_id) == (world.admin.id, str(world.bob.id))

    async def test_an_empty_patch_changes_and_records_nothing(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        before = await snapshot(database)
        response = await _patch(client, world.admin, world.bob, {"name": "Bob"})
        assert response.status_code == 200
        assert (await _patch(client, world.admin, world.bob, {})).status_code == 200
        assert await snapshot(database) == before

    async def test_org_admin_changes_a_role(self, client: httpx.AsyncClient, world: World) -> None:
        response = await _patch(client, world.admin, world.bob, {"role": "org_admin"})
        assert response.status_code == 200 and response.json()["role"] == "org_admin"
        listed = await client.get(f"{API}/users", headers=world.bob.headers)
        assert listed.json()["total"] == 6

    async def test_team_owner_cannot_change_roles(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        before = await snapshot(database)
        response = await _patch(client, world.owner, world.alice, {"role": "team_owner"})
        assert response.status_code == 403
        assert "role" in response.json()["detail"]
        assert await snapshot(database) == before
        assert (await user_of(database, world.alice.id)).role == Role.MEMBER

    async def test_only_a_super_admin_grants_super_admin(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        refused = await _patch(client, world.admin, world.bob, {"role": "super_admin"})
        granted = await _patch(
            client, acting_in(world.root, world.org_id), world.bob, {"role": "super_admin"}
        )
        assert (refused.status_code, granted.status_code) == (403, 200)
        assert (await user_of(database, world.bob.id)).role == Role.SUPER_ADMIN
        # From now on an org admin may not touch them.
        demote = await _patch(client, world.admin, world.bob, {"role": "member"})
        assert demote.status_code == 403

    async def test_team_owner_sets_and_clears_the_override_of_a_member(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        set_ = await _patch(client, world.owner, world.alice, {"allocation_override": 70_000})
        assert set_.json()["allocation_source"] == "override"
        cleared = await _patch(client, world.owner, world.alice, {"allocation_override": None})
        assert cleared.json()["allocation_source"] == "team"
        assert cleared.json()["balance"]["allocation"] == 50_000

    async def test_team_owner_cannot_move_a_member_out_of_their_teams(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        before = await snapshot(database)
        for body in ({"team_id": world.team_b}, {"team_id": None}):
            response = await _patch(client, world.owner, world.alice, body)
            assert response.status_code == 403 and "team_id" in response.json()["detail"]
        assert await snapshot(database) == before

    async def test_team_owner_cannot_deactivate_rename_or_reset_passwords(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        for body in ({"is_active": False}, {"name": "A"}, {"password": "long enough pw"}):
            assert (await _patch(client, world.owner, world.alice, body)).status_code == 403

    async def test_team_owner_cannot_manage_an_org_admin_who_is_in_their_team(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        async with database.transaction() as s:
            boss = await create_user(
                s,
                organization_id=world.org_id,
                email="boss@example.com",
                name="Boss",
                role=Role.ORG_ADMIN,
                team_id=world.team_a,
            )
            boss_id = boss.id
        response = await client.patch(
            f"{API}/users/{boss_id}",
            headers=world.owner.headers,
            json={"allocation_override": 1_000_000},
        )
        assert response.status_code == 403

    async def test_team_owner_gets_404_for_users_outside_their_teams(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await _patch(client, world.owner, world.bob, {"allocation_override": 1})
        assert response.status_code == 404

    async def test_member_gets_404_for_someone_else(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        assert (await _patch(client, world.alice, world.amy, {"name": "X"})).status_code == 404

    async def test_nobody_changes_their_own_allocation_team_role_or_active_flag(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        before = await snapshot(database)
        for person, body in (
            (world.admin, {"allocation_override": 10**9}),
            (world.owner, {"allocation_override": 10**9}),
            (world.admin, {"team_id": world.team_a}),
            (world.admin, {"role": "member"}),
            (world.admin, {"is_active": False}),
            (world.alice, {"allocation_override": 10**9}),
        ):
            assert (await _patch(client, person, person, body)).status_code == 403, body
        assert await snapshot(database) == before

    async def test_anyone_renames_themselves(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        response = await _patch(client, world.alice, world.alice, {"name": "Alicia"})
        assert response.status_code == 200 and response.json()["name"] == "Alicia"
        (row,) = await audit_rows(database, "user.updated")
        assert row.details == {"before": {"name": "Alice"}, "after": {"name": "Alicia"}}

    async def test_deactivating_ends_sessions_and_stops_the_api_key(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        assert (await sign_in(client, world.bob.email, PASSWORD)).status_code == 303
        assert (await client.get("/settings")).status_code == 200
        response = await _patch(client, world.admin, world.bob, {"is_active": False})
        assert response.status_code == 200 and response.json()["is_active"] is False
        assert await open_sessions(database, world.bob.id) == 0
        assert (await client.get("/settings")).status_code == 303
        assert (await client.get(f"{API}/me", headers=world.bob.headers)).status_code == 401

    async def test_demoting_a_team_owner_to_member_drops_their_teams(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        response = await _patch(client, world.admin, world.owner, {"role": "member"})
        assert response.status_code == 200
        teams = (await client.get(f"{API}/teams", headers=world.admin.headers)).json()
        alpha = next(t for t in teams if t["id"] == world.team_a)
        assert alpha["owners"] == []
        (row,) = await audit_rows(database, "user.updated")
        assert row.details["owned_teams_dropped"] == [world.team_a]
        async with database.transaction(write=False) as s:
            assert await s.get(TeamOwner, (world.team_a, world.owner.id)) is None
