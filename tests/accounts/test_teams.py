from __future__ import annotations

from typing import Any

import httpx

from tests.accounts.support import API, audit_rows, error_fields, user_of
from tests.factories import World, snapshot
from tokendesk.accounts.models import Role
from tokendesk.db import Database


def _by_name(teams: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {team["name"]: team for team in teams}


class TestListTeams:
    async def test_everyone_in_the_org_sees_its_teams_with_owners_and_member_count(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.get(f"{API}/teams", headers=world.bob.headers)
        assert response.status_code == 200
        teams = _by_name(response.json())
        assert set(teams) == {"Alpha", "Beta"}
        assert teams["Alpha"]["owners"] == [{"id": world.owner.id, "name": "Owner"}]
        assert (teams["Alpha"]["member_count"], teams["Beta"]["member_count"]) == (3, 1)
        assert (teams["Alpha"]["default_allocation"], teams["Beta"]["default_allocation"]) == (
            50_000,
            None,
        )

    async def test_another_organization_sees_only_its_own_teams(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        assert (await client.get(f"{API}/teams", headers=world.oscar.headers)).json() == []
        response = await client.get(f"{API}/teams/{world.team_a}", headers=world.oscar.headers)
        assert response.status_code == 404


class TestCreateTeam:
    async def test_org_admin_creates_a_team_and_it_is_audited(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        response = await client.post(
            f"{API}/teams",
            headers=world.admin.headers,
            json={"name": " Gamma ", "default_allocation": 20_000},
        )
        assert response.status_code == 201
        body = response.json()
        assert (body["name"], body["default_allocation"], body["member_count"]) == (
            "Gamma",
            20_000,
            0,
        )
        row = (await audit_rows(database, "team.created"))[-1]
        assert (row.actor_id, row.target_id) == (world.admin.id, str(body["id"]))

    async def test_a_taken_name_is_a_conflict_naming_name(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        before = await snapshot(database)
        response = await client.post(
            f"{API}/teams", headers=world.admin.headers, json={"name": "Alpha"}
        )
        assert response.status_code == 409 and error_fields(response.json()) == ["name"]
        assert await snapshot(database) == before

    async def test_the_same_name_is_free_in_another_organization(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.post(
            f"{API}/teams", headers=world.olga.headers, json={"name": "Alpha"}
        )
        assert response.status_code == 201

    async def test_team_owners_and_members_are_refused_with_403(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        for person in (world.owner, world.alice):
            response = await client.post(
                f"{API}/teams", headers=person.headers, json={"name": "Mine"}
            )
            assert response.status_code == 403


class TestUpdateTeam:
    async def test_org_admin_renames_a_team_and_the_change_is_audited(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        response = await client.patch(
            f"{API}/teams/{world.team_b}", headers=world.admin.headers, json={"name": "Bravo"}
        )
        assert response.status_code == 200 and response.json()["name"] == "Bravo"
        (row,) = await audit_rows(database, "team.updated")
        assert row.details == {"before": {"name": "Beta"}, "after": {"name": "Bravo"}}

    async def test_renaming_to_a_taken_name_is_a_conflict_naming_name(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        before = await snapshot(database)
        response = await client.patch(
            f"{API}/teams/{world.team_b}", headers=world.admin.headers, json={"name": "Alpha"}
        )
        assert response.status_code == 409 and error_fields(response.json()) == ["name"]
        assert await snapshot(database) == before

    async def test_owner_ids_replace_the_owners_and_roles_follow(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        response = await client.patch(
            f"{API}/teams/{world.team_a}",
            headers=world.admin.headers,
            json={"owner_ids": [world.amy.id, world.admin.id]},
        )
        assert response.status_code == 200
        owners = {o["id"] for o in response.json()["owners"]}
        assert owners == {world.amy.id, world.admin.id}
        # A plain member who gets a team becomes a team owner; one who loses their
        # last team goes back to member; an org admin keeps their role.
        assert (await user_of(database, world.amy.id)).role == Role.TEAM_OWNER
        assert (await user_of(database, world.owner.id)).role == Role.MEMBER
        assert (await user_of(database, world.admin.id)).role == Role.ORG_ADMIN
        (row,) = await audit_rows(database, "team.updated")
        assert row.details["after"]["owner_ids"] == sorted([world.amy.id, world.admin.id])
        new_owner_view = await client.get(f"{API}/users", headers=world.amy.headers)
        assert new_owner_view.status_code == 200

    async def test_owners_must_belong_to_the_organization(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        before = await snapshot(database)
        for owner_ids in ([world.oscar.id], [world.bob.id, 999_999]):
            response = await client.patch(
                f"{API}/teams/{world.team_a}",
                headers=world.admin.headers,
                json={"owner_ids": owner_ids, "name": "Renamed"},
            )
            assert response.status_code == 422
            assert error_fields(response.json()) == ["owner_ids"]
        assert await snapshot(database) == before
        assert (await user_of(database, world.bob.id)).role == Role.MEMBER

    async def test_a_team_of_another_organization_is_404(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.patch(
            f"{API}/teams/{world.team_a}", headers=world.olga.headers, json={"name": "Mine"}
        )
        assert response.status_code == 404

    async def test_team_owners_are_refused_with_403(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.patch(
            f"{API}/teams/{world.team_a}",
            headers=world.owner.headers,
            json={"default_allocation": 10**9},
        )
        assert response.status_code == 403


class TestDeleteTeam:
    async def test_members_become_teamless_and_sole_owners_become_members(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        response = await client.delete(f"{API}/teams/{world.team_a}", headers=world.admin.headers)
        assert response.status_code == 204
        teams = (await client.get(f"{API}/teams", headers=world.admin.headers)).json()
        assert [t["name"] for t in teams] == ["Beta"]
        assert (await user_of(database, world.alice.id)).team_id is None
        assert (await user_of(database, world.owner.id)).role == Role.MEMBER
        (row,) = await audit_rows(database, "team.deleted")
        assert row.details["name"] == "Alpha"
        assert sorted(row.details["members"]) == sorted(
            [world.owner.id, world.alice.id, world.amy.id]
        )

    async def test_a_team_of_another_organization_is_404(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        before = await snapshot(database)
        response = await client.delete(f"{API}/teams/{world.team_a}", headers=world.olga.headers)
        assert response.status_code == 404
        assert await snapshot(database) == before

    async def test_team_owners_are_refused_with_403(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.delete(f"{API}/teams/{world.team_a}", headers=world.owner.headers)
        assert response.status_code == 403
