"""The Users section: directory, creating people, editing, adjustments and the ledger."""

from __future__ import annotations

import httpx

from tests.accounts.support import PASSWORD, user_of
from tests.factories import World, snapshot
from tests.web_admin.conftest import LoginFactory, remaining, submit
from tokendesk.accounts.models import Organization
from tokendesk.accounts.security import verify_password
from tokendesk.db import Database
from tokendesk.token_requests import pool

NEW_PASSWORD = "a new passphrase"


async def _set_pool(database: Database, world: World, *, left: int) -> None:
    """Give Acme a pool with ``left`` tokens to spare this period."""
    async with database.transaction() as s:
        usage = await pool.pool_usage(s, organization_id=world.org_id)
        assert usage is None
        org = await s.get(Organization, world.org_id)
        assert org is not None
        org.pool = 0
        await s.flush()
        usage = await pool.pool_usage(s, organization_id=world.org_id)
        assert usage is not None
        org.pool = -usage.left + left


class TestDirectory:
    async def test_lists_team_role_allocation_source_usage_and_status(
        self, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        page = (await admin.get("/admin/users")).text
        nora = page[page.index("nora@example.com") :]
        nora = nora[: nora.index("</tr>")]
        assert "5,000" in nora and "override" in nora and "active" in nora
        alice = page[page.index("alice@example.com") :]
        alice = alice[: alice.index("</tr>")]
        assert "Alpha" in alice and "50,000" in alice and "team default" in alice
        assert "9 users" not in page and "6 users" in page

    async def test_search_and_filters_narrow_the_list(
        self, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        page = (await admin.get("/admin/users?q=ali")).text
        assert "alice@example.com" in page and "bob@example.com" not in page
        page = (await admin.get(f"/admin/users?team_id={world.team_b}")).text
        assert "bob@example.com" in page and "alice@example.com" not in page
        page = (await admin.get("/admin/users?role=org_admin")).text
        assert "1 user<" in page

    async def test_team_owner_sees_only_members_of_their_teams(
        self, world: World, login: LoginFactory
    ) -> None:
        owner = await login(world.owner)
        page = (await owner.get("/admin/users")).text
        assert "alice@example.com" in page and "amy@example.com" in page
        assert "bob@example.com" not in page and "nora@example.com" not in page


class TestCreate:
    async def test_new_user_starts_with_their_allocation_and_lands_on_their_page(
        self, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        dialog = (await admin.htmx_get("/admin/users/new")).text
        assert 'for="new-email"' in dialog and 'for="new-password"' in dialog
        response = await admin.post(
            "/admin/users",
            {
                "email": "Zoe@Example.com",
                "name": "Zoe",
                "role": "member",
                "team_id": str(world.team_b),
                "allocation_override": "12,000",
                "password": "long enough password",
            },
        )
        assert response.status_code == 200
        target = response.headers["HX-Redirect"]
        page = (await admin.get(target)).text
        assert "zoe@example.com" in page and "User created." in page
        assert 'id="user-remaining">12,000<' in page

    async def test_an_internal_domain_is_accepted_and_stored_lower_cased(
        self, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        response = await admin.post(
            "/admin/users", {"email": "Zed@Corp.Local", "name": "Zed", "role": "member"}
        )
        assert response.status_code == 200, response.text
        page = (await admin.get(response.headers["HX-Redirect"])).text
        assert "zed@corp.local" in page

    async def test_a_malformed_email_is_shown_next_to_the_email_field(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        before = await snapshot(database)
        response = await admin.post(
            "/admin/users", {"email": "zed smith@corp.local", "name": "Zed", "role": "member"}
        )
        assert response.status_code == 422
        assert 'id="new-email-error">must not contain spaces' in response.text
        assert await snapshot(database) == before

    async def test_a_duplicate_email_is_shown_next_to_the_email_field(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        before = await snapshot(database)
        response = await admin.post(
            "/admin/users", {"email": "alice@example.com", "name": "Alice Two", "role": "member"}
        )
        assert response.status_code == 409
        assert (
            '<p class="field-error" id="new-email-error">a user with email '
            "&#39;alice@example.com&#39; already exists</p>"
        ) in response.text
        assert 'value="Alice Two"' in response.text
        assert await snapshot(database) == before

    async def test_bad_fields_are_named_and_nothing_is_written(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        before = await snapshot(database)
        response = await admin.post(
            "/admin/users",
            {"email": "not-an-email", "name": "X", "allocation_override": "lots", "password": "x"},
        )
        assert response.status_code == 422
        for field in ("email", "allocation_override", "password"):
            assert f'id="new-{field}-error"' in response.text
        assert await snapshot(database) == before

    async def test_team_owner_may_only_add_members_to_a_team_they_own(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        owner = await login(world.owner)
        before = await snapshot(database)
        response = await owner.post(
            "/admin/users",
            {"email": "x@example.com", "name": "X", "team_id": str(world.team_b)},
        )
        assert response.status_code == 403
        assert "team owners may only add members to a team they own" in response.text
        assert await snapshot(database) == before


class TestEdit:
    async def test_an_allocation_override_takes_effect_at_once(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        before = await remaining(client, world.alice)
        response = await admin.post(
            f"/admin/users/{world.alice.id}",
            {
                "name": "Alice",
                "role": "member",
                "team_id": str(world.team_a),
                "allocation_override": "80000",
                "active_shown": "1",
                "is_active": "1",
            },
        )
        assert response.status_code == 200
        assert response.text.lstrip().startswith('<div id="user-detail">')
        assert await remaining(client, world.alice) == before + 30_000
        assert "override changed" in response.text

    async def test_team_owner_changes_allocation_but_not_role(
        self, client: httpx.AsyncClient, database: Database, world: World, login: LoginFactory
    ) -> None:
        owner = await login(world.owner)
        page = (await owner.get(f"/admin/users/{world.alice.id}")).text
        assert 'id="edit-role" name="role" disabled' in page
        before = await snapshot(database)
        response = await owner.post(f"/admin/users/{world.alice.id}", {"role": "org_admin"})
        assert response.status_code == 403
        assert "role: only an org admin may change this" in response.text
        assert await snapshot(database) == before
        response = await owner.post(
            f"/admin/users/{world.alice.id}", {"allocation_override": "60000"}
        )
        assert response.status_code == 200
        assert await remaining(client, world.alice) == 60_000

    async def test_a_bad_override_is_shown_next_to_its_field(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        before = await snapshot(database)
        response = await admin.post(f"/admin/users/{world.bob.id}", {"allocation_override": "-5"})
        assert response.status_code == 422
        assert 'id="edit-allocation_override-error"' in response.text
        assert await snapshot(database) == before

    async def test_deactivating_is_saved(self, world: World, login: LoginFactory) -> None:
        admin = await login(world.admin)
        response = await admin.post(f"/admin/users/{world.bob.id}", {"active_shown": "1"})
        assert response.status_code == 200
        assert '<span class="pill pill-cancelled">inactive</span>' in response.text


class TestPasswords:
    async def test_an_admin_changes_their_own_password_with_the_current_one(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        page = (await admin.get(f"/admin/users/{world.admin.id}")).text
        assert 'name="current_password"' in page
        response = await admin.post(
            f"/admin/users/{world.admin.id}",
            {"password": NEW_PASSWORD, "current_password": PASSWORD},
        )
        assert response.status_code == 200, response.text
        stored = (await user_of(database, world.admin.id)).password_hash
        assert await verify_password(stored, NEW_PASSWORD)
        # The browser that made the change stays signed in.
        assert (await admin.get("/admin/users")).status_code == 200

    async def test_a_wrong_current_password_is_shown_next_to_its_field(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        before = await snapshot(database)
        response = await admin.post(
            f"/admin/users/{world.admin.id}",
            {"password": NEW_PASSWORD, "current_password": "not my password"},
        )
        assert response.status_code == 403
        assert 'id="edit-current_password-error"' in response.text
        assert await snapshot(database) == before

    async def test_someone_elses_password_is_set_without_a_current_one(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        page = (await admin.get(f"/admin/users/{world.bob.id}")).text
        assert 'name="current_password"' not in page
        response = await admin.post(f"/admin/users/{world.bob.id}", {"password": NEW_PASSWORD})
        assert response.status_code == 200, response.text
        stored = (await user_of(database, world.bob.id)).password_hash
        assert await verify_password(stored, NEW_PASSWORD)


class TestAdjustments:
    async def test_adjustment_with_a_note_moves_the_balance_and_shows_in_the_ledger(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        before = await remaining(client, world.bob)
        response = await admin.post(
            f"/admin/users/{world.bob.id}/adjustments", {"amount": "-2,000", "note": "refund"}
        )
        assert response.status_code == 200
        assert await remaining(client, world.bob) == before - 2_000
        assert "-2,000" in response.text and "refund" in response.text

    async def test_a_missing_note_is_named_and_nothing_moves(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        before = await snapshot(database)
        response = await admin.post(
            f"/admin/users/{world.bob.id}/adjustments", {"amount": "500", "note": ""}
        )
        assert response.status_code == 422
        assert 'id="adjust-note-error"' in response.text
        assert await snapshot(database) == before

    async def test_an_adjustment_beyond_the_pool_is_shown_next_to_the_amount(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        await _set_pool(database, world, left=1_000)
        owner = await login(world.owner)
        before = await snapshot(database)
        response = await owner.post(
            f"/admin/users/{world.alice.id}/adjustments", {"amount": "1,001", "note": "extra"}
        )
        assert response.status_code == 409
        assert (
            '<p class="field-error" id="adjust-amount-error">the organization&#39;s token pool '
            "has 1000 tokens left this period; granting 1001 would exceed it</p>"
        ) in response.text
        assert await snapshot(database) == before

    async def test_an_override_raise_beyond_the_pool_is_shown_next_to_the_field(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        await _set_pool(database, world, left=1_000)
        owner = await login(world.owner)
        before = await snapshot(database)
        response = await owner.post(
            f"/admin/users/{world.alice.id}", {"allocation_override": "51,001"}
        )
        assert response.status_code == 409
        assert 'id="edit-allocation_override-error">the organization&#39;s token pool' in (
            response.text
        )
        assert await snapshot(database) == before

    async def test_nobody_adjusts_their_own_balance(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        page = (await admin.get(f"/admin/users/{world.admin.id}")).text
        assert "Nobody adjusts their own balance." in page
        before = await snapshot(database)
        response = await admin.post(
            f"/admin/users/{world.admin.id}/adjustments", {"amount": "500", "note": "me"}
        )
        assert response.status_code == 403
        assert await snapshot(database) == before


class TestLedger:
    async def test_grants_link_to_their_request(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        request_id = await submit(client, world.alice, 1_234)
        await client.post(
            f"/api/v1/token-requests/{request_id}/approve",
            json={"note": "go"},
            headers=world.admin.headers,
        )
        owner = await login(world.owner)
        page = (await owner.get(f"/admin/users/{world.alice.id}")).text
        assert "+1,234" in page and ">go<" in page and ">Admin<" in page
        assert f"#request-{request_id}" in page

    async def test_someone_outside_the_scope_is_not_found(
        self, world: World, login: LoginFactory
    ) -> None:
        owner = await login(world.owner)
        response = await owner.get(f"/admin/users/{world.bob.id}")
        assert response.status_code == 404
        assert f"user {world.bob.id} not found" in response.text
