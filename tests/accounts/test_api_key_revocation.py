from __future__ import annotations

import httpx

from tests.accounts.support import API, acting_in, audit_rows, key_id_of
from tests.factories import World
from tokendesk.db import Database


class TestAdminKeyRevocation:
    async def test_org_admin_revokes_a_key_of_anyone_in_their_org(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        key_id = await key_id_of(database, world.bob)
        response = await client.delete(f"{API}/api-keys/{key_id}", headers=world.admin.headers)
        assert response.status_code == 204
        assert (await client.get(f"{API}/me", headers=world.bob.headers)).status_code == 401
        (row,) = await audit_rows(database, "api_key.revoked")
        assert row.actor_id == world.admin.id and row.details["user_id"] == world.bob.id

    async def test_team_owner_revokes_a_key_of_a_member_of_their_team(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        key_id = await key_id_of(database, world.alice)
        response = await client.delete(f"{API}/api-keys/{key_id}", headers=world.owner.headers)
        assert response.status_code == 204
        assert (await client.get(f"{API}/me", headers=world.alice.headers)).status_code == 401

    async def test_team_owner_gets_404_for_a_key_outside_their_teams(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        for person in (world.bob, world.nora, world.admin):
            key_id = await key_id_of(database, person)
            response = await client.delete(f"{API}/api-keys/{key_id}", headers=world.owner.headers)
            assert response.status_code == 404
        assert (await client.get(f"{API}/me", headers=world.bob.headers)).status_code == 200

    async def test_org_admin_of_another_org_gets_404(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        key_id = await key_id_of(database, world.alice)
        response = await client.delete(f"{API}/api-keys/{key_id}", headers=world.olga.headers)
        assert response.status_code == 404
        assert (await client.get(f"{API}/me", headers=world.alice.headers)).status_code == 200

    async def test_super_admin_revokes_in_the_organization_they_act_in(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        key_id = await key_id_of(database, world.alice)
        at_home = await client.delete(f"{API}/api-keys/{key_id}", headers=world.root.headers)
        assert at_home.status_code == 404
        in_acme = await client.delete(
            f"{API}/api-keys/{key_id}", headers=acting_in(world.root, world.org_id)
        )
        assert in_acme.status_code == 204

    async def test_member_is_refused_with_403(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        key_id = await key_id_of(database, world.amy)
        response = await client.delete(f"{API}/api-keys/{key_id}", headers=world.alice.headers)
        assert response.status_code == 403


class TestListUserKeys:
    async def test_admin_lists_keys_of_a_user_in_scope_without_the_key(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.get(
            f"{API}/users/{world.alice.id}/api-keys", headers=world.owner.headers
        )
        assert response.status_code == 200
        (key,) = response.json()
        assert "key" not in key and key["revoked_at"] is None

    async def test_team_owner_gets_404_outside_their_teams(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.get(
            f"{API}/users/{world.bob.id}/api-keys", headers=world.owner.headers
        )
        assert response.status_code == 404
