"""The Teams section: create, rename, default allocation, owners, members, delete."""

from __future__ import annotations

import httpx

from tests.factories import World, snapshot
from tests.token_requests.support import actor_for
from tests.web_admin.conftest import LoginFactory, remaining
from tokendesk.db import Database
from tokendesk.notifications import team_approvers


class TestList:
    async def test_lists_teams_with_default_owners_and_member_count(
        self, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        page = (await admin.get("/admin/teams")).text
        alpha = page[page.index(f'href="/admin/teams/{world.team_a}"') :]
        alpha = alpha[: alpha.index("</tr>")]
        assert "50,000" in alpha and "Owner" in alpha and ">3<" in alpha
        assert 'id="team-name"' in page

    async def test_team_owner_sees_the_teams_but_no_create_form(
        self, world: World, login: LoginFactory
    ) -> None:
        owner = await login(world.owner)
        page = (await owner.get("/admin/teams")).text
        assert "Alpha" in page and "Beta" in page and 'id="team-name"' not in page


class TestCreate:
    async def test_create_shows_the_new_team(self, world: World, login: LoginFactory) -> None:
        admin = await login(world.admin)
        response = await admin.post(
            "/admin/teams", {"name": "Gamma", "default_allocation": "70,000"}
        )
        assert response.status_code == 200
        assert "Gamma" in response.text and "70,000" in response.text

    async def test_a_duplicate_name_is_shown_next_to_the_name(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        before = await snapshot(database)
        response = await admin.post("/admin/teams", {"name": "Alpha"})
        assert response.status_code == 409
        assert 'id="team-name-error">a team named &#39;Alpha&#39; already exists<' in (
            response.text
        )
        assert await snapshot(database) == before

    async def test_team_owner_may_not_create_teams(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        owner = await login(world.owner)
        before = await snapshot(database)
        response = await owner.post("/admin/teams", {"name": "Mine"})
        assert response.status_code == 403
        assert "this needs an org admin or super admin" in response.text
        assert await snapshot(database) == before


class TestEdit:
    async def test_rename_default_allocation_and_owners_in_one_save(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        before = await remaining(client, world.bob)
        response = await admin.post(
            f"/admin/teams/{world.team_b}",
            {"name": "Beta Squad", "default_allocation": "120000", "owner_ids": str(world.bob.id)},
        )
        assert response.status_code == 200
        assert "<h1>Beta Squad</h1>" in response.text
        assert "owners: Bob" in response.text
        assert await remaining(client, world.bob) == before + 20_000
        bob = await login(world.bob)
        assert (await bob.get("/admin/requests")).status_code == 200

    async def test_bad_default_allocation_is_named(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        before = await snapshot(database)
        response = await admin.post(
            f"/admin/teams/{world.team_a}", {"name": "Alpha", "default_allocation": "many"}
        )
        assert response.status_code == 422
        assert 'id="tedit-default_allocation-error"' in response.text
        assert await snapshot(database) == before

    async def test_team_owner_sees_no_settings_form(
        self, world: World, login: LoginFactory
    ) -> None:
        owner = await login(world.owner)
        page = (await owner.get(f"/admin/teams/{world.team_a}")).text
        assert "Only org admins rename teams" in page and 'id="tedit-name"' not in page


class TestMembers:
    async def test_add_and_remove_a_member(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        response = await admin.post(
            f"/admin/teams/{world.team_a}/members", {"user_id": str(world.nora.id)}
        )
        assert response.status_code == 200
        assert "nora@example.com" in response.text
        response = await admin.post(f"/admin/teams/{world.team_a}/members/{world.alice.id}/remove")
        assert response.status_code == 200
        members = response.text[response.text.index('id="members-title"') :]
        assert "alice@example.com" not in members
        # Without a team, Alice falls back to the organization default.
        assert await remaining(client, world.alice) == 100_000

    async def test_team_owner_cannot_move_someone_out_of_their_teams(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        owner = await login(world.owner)
        before = await snapshot(database)
        response = await owner.post(f"/admin/teams/{world.team_a}/members/{world.alice.id}/remove")
        assert response.status_code == 403
        assert "team owners may only move members between teams they own" in response.text
        assert await snapshot(database) == before

    async def test_choosing_nobody_is_named(self, world: World, login: LoginFactory) -> None:
        admin = await login(world.admin)
        response = await admin.post(f"/admin/teams/{world.team_a}/members", {"user_id": ""})
        assert response.status_code == 422
        assert 'id="member-user_id-error">choose a person<' in response.text


class TestDelete:
    async def test_deleting_a_team_returns_to_the_list(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        response = await admin.post(f"/admin/teams/{world.team_b}/delete")
        assert response.status_code == 200
        page = (await admin.get(response.headers["HX-Redirect"])).text
        assert "Deleted team Beta." in page
        assert (await client.get("/api/v1/me", headers=world.bob.headers)).json()["team"] is None

    async def test_team_owner_may_not_delete(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        owner = await login(world.owner)
        before = await snapshot(database)
        response = await owner.post(f"/admin/teams/{world.team_a}/delete")
        assert response.status_code == 403
        assert await snapshot(database) == before


class TestApprovers:
    async def test_an_admin_names_who_hears_of_the_teams_requests(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        page = (await admin.get(f"/admin/teams/{world.team_a}")).text
        assert 'id="team-approvers-now">Now: Owner (the default' in page
        response = await admin.post(
            f"/admin/teams/{world.team_a}/approvers", {"approver_ids": str(world.admin.id)}
        )
        assert response.status_code == 200, response.text
        assert 'id="team-approvers-now">Now: Admin.<' in response.text
        actor = await actor_for(database, world.admin)
        async with database.transaction(write=False) as s:
            hearing = await team_approvers.read(s, actor=actor, team_id=world.team_a)
        assert hearing.user_ids == [world.admin.id]

    async def test_someone_who_may_not_decide_is_refused_beside_the_list(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        before = await snapshot(database)
        response = await admin.post(
            f"/admin/teams/{world.team_a}/approvers", {"approver_ids": str(world.alice.id)}
        )
        assert response.status_code == 422
        error = f'id="tappr-user_ids-error">user {world.alice.id} cannot decide team'
        assert error in response.text
        assert await snapshot(database) == before

    async def test_a_team_owner_does_not_see_the_choice(
        self, world: World, login: LoginFactory
    ) -> None:
        owner = await login(world.owner)
        page = (await owner.get(f"/admin/teams/{world.team_a}")).text
        assert "team-approvers-title" not in page
