"""The Integrations page and the Settings page's provisioning settings."""

from __future__ import annotations

import httpx

from tests.factories import World, snapshot
from tests.web_admin.conftest import LoginFactory
from tests.web_admin.test_settings import SETTINGS_FORM
from tokendesk.db import Database


class TestIntegrationsPage:
    async def test_only_org_admins_see_the_section(self, world: World, login: LoginFactory) -> None:
        admin = await login(world.admin)
        assert 'href="/admin/integrations"' in (await admin.get("/admin/requests")).text
        owner = await login(world.owner)
        assert 'href="/admin/integrations"' not in (await owner.get("/admin/requests")).text
        assert (await owner.get("/admin/integrations")).status_code == 403

    async def test_a_created_key_is_shown_once_with_the_settings_to_paste(
        self, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        response = await admin.post(
            "/admin/integrations", {"name": "LibreChat", "preset": "librechat"}
        )
        assert response.status_code == 200, response.text
        assert 'id="new-integration-key"' in response.text
        assert 'baseURL: "http://test/v1"' in response.text
        assert "{{LIBRECHAT_USER_EMAIL}}" in response.text
        assert 'default: ["demo"]' in response.text
        page = (await admin.get("/admin/integrations")).text
        assert "LibreChat" in page and 'id="new-integration-key"' not in page

    async def test_bad_input_is_named_next_to_its_field_and_nothing_is_written(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        before = await snapshot(database)
        response = await admin.post(
            "/admin/integrations",
            {"name": "Chat", "preset": "open-webui", "user_id_header": "X User", "jwt_secret": "x"},
        )
        assert response.status_code == 422
        assert 'id="int-user_id_header-error"' in response.text
        assert 'id="int-jwt_secret-error"' in response.text
        assert await snapshot(database) == before

    async def test_revoking_marks_the_row_revoked(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        await admin.post("/admin/integrations", {"name": "Open WebUI", "preset": "open-webui"})
        (row,) = (await client.get("/api/v1/integrations", headers=world.admin.headers)).json()
        response = await admin.post(f"/admin/integrations/{row['id']}/revoke")
        assert response.status_code == 200
        assert 'pill-cancelled">revoked' in response.text


class TestProvisioningSettings:
    async def test_saved_settings_reach_the_api(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        response = await admin.post(
            "/admin/settings",
            {
                **SETTINGS_FORM,
                "provision_domains": "Example.com, corp.local",
                "provision_team_id": str(world.team_b),
            },
        )
        assert response.status_code == 200, response.text
        body = (await client.get("/api/v1/organization", headers=world.admin.headers)).json()
        assert body["provision_users"] is False  # the box was not ticked
        assert body["provision_domains"] == ["example.com", "corp.local"]
        assert body["provision_team_id"] == world.team_b
        assert 'value="example.com, corp.local"' in response.text

    async def test_a_bad_domain_is_named_and_nothing_changes(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        before = await snapshot(database)
        response = await admin.post(
            "/admin/settings",
            {**SETTINGS_FORM, "provision_users": "1", "provision_domains": "not_a domain!"},
        )
        assert response.status_code == 422
        assert 'id="set-provision_domains-error"' in response.text
        assert await snapshot(database) == before
