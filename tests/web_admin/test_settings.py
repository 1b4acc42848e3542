"""Settings with the next-reset preview and the pool, and the audit log with its filters."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx

from tests.factories import World, make_world, snapshot
from tests.web_admin.conftest import LoginFactory, submit
from tokendesk.db import Database
from tokendesk.ledger.periods import next_reset
from tokendesk.web.templating import local_datetime


def preview_date(html: str) -> str:
    match = re.search(r'id="next-reset-date">([^<]+)<', html)
    assert match, "no next-reset preview"
    return match.group(1)


class TestNextResetPreview:
    async def test_preview_follows_the_chosen_day_and_time_zone(
        self, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        html = (
            await admin.htmx_get("/admin/settings/next-reset?reset_day=15&timezone=Asia/Tokyo")
        ).text
        expected = next_reset(datetime.now(UTC), reset_day=15, timezone="Asia/Tokyo")
        assert preview_date(html) == local_datetime(expected, "Asia/Tokyo")
        assert preview_date(html).endswith("00:00 JST")

    async def test_an_unknown_time_zone_is_named(self, world: World, login: LoginFactory) -> None:
        admin = await login(world.admin)
        html = (
            await admin.htmx_get("/admin/settings/next-reset?reset_day=3&timezone=Mars/Base")
        ).text
        assert "Unknown time zone &#39;Mars/Base&#39;." in html

    async def test_a_reset_day_outside_1_to_28_is_named(
        self, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        html = (await admin.htmx_get("/admin/settings/next-reset?reset_day=31&timezone=UTC")).text
        assert "Pick a reset day between 1 and 28." in html


class TestSave:
    async def test_saving_a_new_reset_day_shows_the_new_next_reset(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        page = (await admin.get("/admin/settings")).text
        assert 'id="set-reset_day"' in page and 'id="set-timezone"' in page
        response = await admin.post(
            "/admin/settings",
            {
                "name": "Acme",
                "default_allocation": "100000",
                "reset_day": "20",
                "timezone": "Europe/Paris",
                "max_request": "1000000",
                "low_balance_percent": "20",
                "pool": "",
            },
        )
        assert response.status_code == 200
        expected = next_reset(datetime.now(UTC), reset_day=20, timezone="Europe/Paris")
        shown = local_datetime(expected, "Europe/Paris")
        assert f'id="current-next-reset">{shown}<' in response.text
        me = (await client.get("/api/v1/me", headers=world.alice.headers)).json()
        assert datetime.fromisoformat(me["balance"]["next_reset_at"]) == expected

    async def test_bad_values_are_named_next_to_their_fields(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        before = await snapshot(database)
        response = await admin.post(
            "/admin/settings",
            {
                "name": "Acme",
                "default_allocation": "-1",
                "reset_day": "1",
                "timezone": "Nowhere/City",
                "max_request": "0",
                "low_balance_percent": "20",
            },
        )
        assert response.status_code == 422
        for field in ("default_allocation", "max_request"):
            assert f'id="set-{field}-error"' in response.text
        assert await snapshot(database) == before

    async def test_an_unknown_time_zone_is_named_by_the_service(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        before = await snapshot(database)
        response = await admin.post(
            "/admin/settings",
            {
                "name": "Acme",
                "default_allocation": "100000",
                "reset_day": "1",
                "timezone": "Nowhere/City",
                "max_request": "1000000",
                "low_balance_percent": "20",
            },
        )
        assert response.status_code == 422
        assert 'id="set-timezone-error">unknown IANA time zone &#39;Nowhere/City&#39;<' in (
            response.text
        )
        assert await snapshot(database) == before

    async def test_team_owner_reads_but_cannot_save(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        owner = await login(world.owner)
        page = (await owner.get("/admin/settings")).text
        assert "Only org admins change these settings." in page
        assert (
            'id="set-name" name="name" type="text" required maxlength="200" value="Acme" disabled'
            in page
        )
        before = await snapshot(database)
        response = await owner.post(
            "/admin/settings",
            {
                "name": "Owned",
                "default_allocation": "100000",
                "reset_day": "1",
                "timezone": "UTC",
                "max_request": "1000000",
                "low_balance_percent": "20",
            },
        )
        assert response.status_code == 403
        assert "this needs an org admin or super admin" in response.text
        assert await snapshot(database) == before


class TestPool:
    async def test_pool_shows_allocated_granted_and_left(
        self, client: httpx.AsyncClient, database: Database, login: LoginFactory
    ) -> None:
        world = await make_world(database, pool=1_000_000)
        request_id = await submit(client, world.alice, 10_000)
        await client.post(
            f"/api/v1/token-requests/{request_id}/approve", json={}, headers=world.admin.headers
        )
        admin = await login(world.admin)
        page = (await admin.get("/admin/settings")).text
        # admin, nora (5,000 override), owner/alice/amy (Alpha 50,000), bob (org 100,000).
        allocated = 100_000 + 50_000 * 3 + 100_000 + 5_000
        left = 1_000_000 - allocated - 10_000
        assert f'id="pool-left">{left:,}<' in page
        assert f">{allocated:,}<" in page and ">10,000<" in page


class TestAuditLog:
    async def test_lists_decisions_with_actor_action_target_and_details(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        request_id = await submit(client, world.alice, 2_000)
        await client.post(
            f"/api/v1/token-requests/{request_id}/approve",
            json={"note": "fine"},
            headers=world.admin.headers,
        )
        admin = await login(world.admin)
        page = (await admin.get("/admin/audit?action=token_request.approved")).text
        assert "<code>token_request.approved</code>" in page
        assert f"token request #{request_id}" in page
        assert "note: fine · amount: 2,000 · requested: 2,000" in page
        assert "<code>user.created</code>" not in page

    async def test_filters_by_actor_target_and_date(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        request_id = await submit(client, world.alice, 2_000)
        admin = await login(world.admin)
        page = (await admin.get(f"/admin/audit?actor_id={world.alice.id}")).text
        assert "<code>token_request.created</code>" in page
        assert "<code>user.login</code>" not in page
        page = (
            await admin.get(f"/admin/audit?target_type=token_request&target_id={request_id}")
        ).text
        assert "1 entry<" in page
        tomorrow = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
        page = (await admin.get(f"/admin/audit?since={tomorrow}")).text
        assert "No entries match these filters." in page
        page = (await admin.get(f"/admin/audit?since={tomorrow}&until=2000-01-01")).text
        assert "To: must not be before From." in page

    async def test_team_owner_is_told_the_log_is_for_org_admins(
        self, world: World, login: LoginFactory
    ) -> None:
        owner = await login(world.owner)
        page = (await owner.get("/admin/audit")).text
        assert "The audit log is for org admins." in page
        assert "<code>" not in page


SETTINGS_FORM = {
    "name": "Acme",
    "default_allocation": "100000",
    "reset_day": "1",
    "timezone": "UTC",
    "max_request": "1000000",
    "low_balance_percent": "20",
    "pool": "",
    "checkboxes_shown": "1",
    "password_sign_in": "1",
}


class TestCarryOver:
    async def test_the_box_is_ticked_by_default(self, world: World, login: LoginFactory) -> None:
        admin = await login(world.admin)
        page = (await admin.get("/admin/settings")).text
        assert re.search(r'<input id="set-carry_over_debt"[^>]* checked', page)

    async def test_unticking_the_box_turns_carrying_over_off_and_ticking_it_on(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        off = await admin.post("/admin/settings", SETTINGS_FORM)
        assert off.status_code == 200
        assert not re.search(r'<input id="set-carry_over_debt"[^>]* checked', off.text)
        org = await client.get("/api/v1/organization", headers=world.admin.headers)
        assert org.json()["carry_over_debt"] is False
        on = await admin.post("/admin/settings", {**SETTINGS_FORM, "carry_over_debt": "1"})
        assert on.status_code == 200
        org = await client.get("/api/v1/organization", headers=world.admin.headers)
        assert org.json()["carry_over_debt"] is True
