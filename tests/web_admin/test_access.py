"""Who may open the admin center, CSRF on every change, and the organization switcher."""

from __future__ import annotations

import httpx
import pytest

from tests.factories import World, snapshot
from tests.web_admin.conftest import LoginFactory
from tokendesk.db import Database

PAGES = [
    "/admin/requests",
    "/admin/users",
    "/admin/teams",
    "/admin/analytics",
    "/admin/settings",
    "/admin/audit",
]


class TestWhoMayEnter:
    async def test_signed_out_visitor_is_sent_to_login(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/admin/requests")
        assert response.status_code == 303
        assert response.headers["location"] == "/login?next=/admin/requests"

    async def test_signed_out_htmx_request_is_told_to_navigate_to_login(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/admin/requests/table", headers={"HX-Request": "true"})
        assert response.status_code == 401
        assert response.headers["HX-Redirect"] == "/login"

    @pytest.mark.parametrize("path", [*PAGES, "/admin/requests/table", "/admin/badge"])
    async def test_member_gets_a_403_page(
        self, world: World, login: LoginFactory, path: str
    ) -> None:
        alice = await login(world.alice)
        response = await alice.get(path)
        assert response.status_code == 403
        assert "The admin center is for team owners and administrators." in response.text

    @pytest.mark.parametrize("who", ["admin", "owner", "root"])
    async def test_every_page_renders_for_each_admin_role(
        self, world: World, login: LoginFactory, who: str
    ) -> None:
        browser = await login(world.people[who])
        for path in PAGES:
            response = await browser.get(path)
            assert response.status_code == 200, f"{path}: {response.text[-2000:]}"
            assert 'id="pending-badge"' in response.text
            assert 'aria-current="page"' in response.text

    async def test_admin_root_opens_the_token_requests(
        self, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        response = await admin.get("/admin")
        assert response.status_code == 303
        assert response.headers["location"] == "/admin/requests"

    async def test_sidebar_names_the_active_organization(
        self, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        page = (await admin.get("/admin/users")).text
        assert '<strong class="org-card-name" id="active-organization">Acme</strong>' in page
        # Only super admins get a switcher.
        assert 'name="organization_id"' not in page


class TestCsrf:
    async def test_decision_without_csrf_token_is_refused_and_changes_nothing(
        self,
        client: httpx.AsyncClient,
        database: Database,
        world: World,
        login: LoginFactory,
    ) -> None:
        created = await client.post(
            "/api/v1/token-requests", json={"amount": 1000}, headers=world.alice.headers
        )
        admin = await login(world.admin)
        before = await snapshot(database)
        response = await admin.post(
            f"/admin/requests/{created.json()['id']}/approve", {"amount": "1000"}, csrf=False
        )
        assert response.status_code == 403
        assert await snapshot(database) == before

    async def test_a_wrong_csrf_token_is_refused(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        admin.csrf = "0" * 64
        before = await snapshot(database)
        response = await admin.post("/admin/settings", {"name": "Renamed"})
        assert response.status_code == 403
        assert await snapshot(database) == before

    async def test_the_token_may_come_as_a_form_field(
        self, world: World, login: LoginFactory
    ) -> None:
        root = await login(world.root)
        response = await root.http.post(
            "/admin/organization",
            data={"organization_id": str(world.org_id), "csrf_token": root.csrf},
        )
        assert response.status_code == 303


class TestOrganizationSwitch:
    async def test_super_admin_switches_and_the_sidebar_shows_the_new_organization(
        self, world: World, login: LoginFactory
    ) -> None:
        root = await login(world.root)
        before = (await root.get("/admin/users")).text
        assert 'id="active-organization">Other Org<' in before
        assert f'<option value="{world.org_id}"' in before
        response = await root.http.post(
            "/admin/organization",
            data={
                "organization_id": str(world.org_id),
                "csrf_token": root.csrf,
                "next": "/admin/users",
            },
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/admin/users"
        page = (await root.get("/admin/users")).text
        assert 'id="active-organization">Acme<' in page
        assert "alice@example.com" in page

    async def test_org_admin_cannot_switch_to_another_organization(
        self, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        response = await admin.http.post(
            "/admin/organization",
            data={"organization_id": str(world.other_org_id), "csrf_token": admin.csrf},
        )
        assert response.status_code == 403
        page = (await admin.get("/admin/users")).text
        assert 'id="active-organization">Acme<' in page
