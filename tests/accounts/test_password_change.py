"""Changing a password: your own takes the current one and a browser session."""

from __future__ import annotations

import httpx
import pytest

from tests.accounts.support import (
    API,
    PASSWORD,
    another_browser,
    open_sessions,
    page_csrf,
    sign_in,
    user_of,
)
from tests.factories import World, snapshot
from tokendesk.accounts.security import verify_password
from tokendesk.db import Database

NEW = "a new passphrase"


async def _change_own(
    http: httpx.AsyncClient, user_id: int, body: dict[str, str]
) -> httpx.Response:
    csrf = await page_csrf(http)
    return await http.patch(f"{API}/users/{user_id}", json=body, headers={"X-CSRF-Token": csrf})


class TestOwnPassword:
    async def test_the_current_password_and_a_browser_session_change_it(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        assert (await sign_in(client, world.alice.email, PASSWORD)).status_code == 303
        response = await _change_own(
            client, world.alice.id, {"password": NEW, "current_password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        assert await verify_password((await user_of(database, world.alice.id)).password_hash, NEW)

    async def test_an_api_key_cannot_change_its_owners_password(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        before = await snapshot(database)
        response = await client.patch(
            f"{API}/users/{world.alice.id}",
            json={"password": NEW, "current_password": PASSWORD},
            headers=world.alice.headers,
        )
        assert response.status_code == 403
        assert "browser session" in response.json()["detail"]
        assert response.json()["errors"][0]["field"] == "password"
        assert await snapshot(database) == before
        assert (await sign_in(client, world.alice.email, NEW)).status_code == 401

    async def test_a_wrong_current_password_is_refused_and_changes_nothing(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        await sign_in(client, world.alice.email, PASSWORD)
        before = (await user_of(database, world.alice.id)).password_hash
        response = await _change_own(
            client, world.alice.id, {"password": NEW, "current_password": "not my password"}
        )
        assert response.status_code == 403
        assert response.json()["errors"][0]["field"] == "current_password"
        assert (await user_of(database, world.alice.id)).password_hash == before

    async def test_a_missing_current_password_is_named(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        await sign_in(client, world.alice.email, PASSWORD)
        before = (await user_of(database, world.alice.id)).password_hash
        response = await _change_own(client, world.alice.id, {"password": NEW})
        assert response.status_code == 422
        assert response.json()["errors"][0]["field"] == "current_password"
        assert (await user_of(database, world.alice.id)).password_hash == before

    async def test_the_change_signs_out_the_other_browsers_but_not_this_one(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        async with another_browser(client) as other:
            assert (await sign_in(other, world.alice.email, PASSWORD)).status_code == 303
            assert (await sign_in(client, world.alice.email, PASSWORD)).status_code == 303
            response = await _change_own(
                client, world.alice.id, {"password": NEW, "current_password": PASSWORD}
            )
            assert response.status_code == 200, response.text
            assert (await other.get("/settings")).status_code == 303
        assert (await client.get("/settings")).status_code == 200
        assert await open_sessions(database, world.alice.id) == 1


class TestWrongCurrentPasswords:
    async def test_wrong_current_passwords_make_the_next_try_wait(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        await sign_in(client, world.alice.email, PASSWORD)
        before = (await user_of(database, world.alice.id)).password_hash
        wrong = {"password": NEW, "current_password": "not my password"}
        for _ in range(3):
            assert (await _change_own(client, world.alice.id, wrong)).status_code == 403
        # Even the right one waits now: a stolen cookie guesses no faster than the sign-in form.
        right = {"password": NEW, "current_password": PASSWORD}
        response = await _change_own(client, world.alice.id, right)
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) >= 1
        assert response.json()["errors"][0]["field"] == "current_password"
        assert (await user_of(database, world.alice.id)).password_hash == before

    async def test_the_settings_form_says_to_wait(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        await sign_in(client, world.alice.email, PASSWORD)
        before = (await user_of(database, world.alice.id)).password_hash
        csrf = await page_csrf(client)
        for current in ("wrong 1", "wrong 2", "wrong 3", PASSWORD):
            response = await client.post(
                "/settings/password",
                data={"csrf_token": csrf, "current_password": current, "password": NEW},
            )
        assert response.headers["location"] == "/settings?password=wait#password-title"
        assert (
            "Too many wrong current passwords" in (await client.get("/settings?password=wait")).text
        )
        assert (await user_of(database, world.alice.id)).password_hash == before


class TestSomeoneElsesPassword:
    async def test_an_org_admin_sets_it_and_their_sessions_end(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        assert (await sign_in(client, world.bob.email, PASSWORD)).status_code == 303
        response = await client.patch(
            f"{API}/users/{world.bob.id}", json={"password": NEW}, headers=world.admin.headers
        )
        assert response.status_code == 200, response.text
        assert (await client.get("/settings")).status_code == 303
        assert await verify_password((await user_of(database, world.bob.id)).password_hash, NEW)

    async def test_a_current_password_for_someone_else_is_refused(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        before = await snapshot(database)
        response = await client.patch(
            f"{API}/users/{world.bob.id}",
            json={"password": NEW, "current_password": PASSWORD},
            headers=world.admin.headers,
        )
        assert response.status_code == 422
        assert response.json()["errors"][0]["field"] == "current_password"
        assert await snapshot(database) == before


class TestSettingsForm:
    async def test_the_settings_page_changes_the_password(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        await sign_in(client, world.alice.email, PASSWORD)
        csrf = await page_csrf(client)
        response = await client.post(
            "/settings/password",
            data={"csrf_token": csrf, "current_password": PASSWORD, "password": NEW},
        )
        assert response.headers["location"] == "/settings?password=changed#password-title"
        page = await client.get("/settings?password=changed")
        assert "Your password is changed" in page.text
        assert await verify_password((await user_of(database, world.alice.id)).password_hash, NEW)

    @pytest.mark.parametrize(
        ("current", "new", "outcome"),
        [("not my password", NEW, "wrong"), ("", NEW, "missing"), (PASSWORD, "short", "short")],
    )
    async def test_a_refused_change_says_why_and_changes_nothing(
        self,
        client: httpx.AsyncClient,
        database: Database,
        world: World,
        current: str,
        new: str,
        outcome: str,
    ) -> None:
        await sign_in(client, world.alice.email, PASSWORD)
        before = (await user_of(database, world.alice.id)).password_hash
        csrf = await page_csrf(client)
        response = await client.post(
            "/settings/password",
            data={"csrf_token": csrf, "current_password": current, "password": new},
        )
        assert response.headers["location"] == f"/settings?password={outcome}#password-title"
        assert (await user_of(database, world.alice.id)).password_hash == before

    async def test_it_needs_the_csrf_token(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        await sign_in(client, world.alice.email, PASSWORD)
        before = (await user_of(database, world.alice.id)).password_hash
        response = await client.post(
            "/settings/password",
            data={"csrf_token": "forged", "current_password": PASSWORD, "password": NEW},
        )
        assert response.headers["location"] == "/settings?password=expired#password-title"
        assert (await user_of(database, world.alice.id)).password_hash == before
