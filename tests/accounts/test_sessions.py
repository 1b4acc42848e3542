"""Browser sessions live on the server: signing out ends them, not only the cookie."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import select, update

from tests.accounts.support import (
    LOGIN_TOKEN,
    PASSWORD,
    another_browser,
    audit_rows,
    open_sessions,
    page_csrf,
    sign_in,
)
from tests.factories import World
from tests.serving import serving
from tokendesk.accounts.auth import SESSION_COOKIE
from tokendesk.accounts.models import LoginSession
from tokendesk.app import create_app
from tokendesk.config import Settings
from tokendesk.db import Database, utcnow


def _replay(client: httpx.AsyncClient, cookie: str) -> httpx.AsyncClient:
    """Somebody who copied a session cookie before its browser signed out."""
    return httpx.AsyncClient(
        transport=client._transport, base_url="http://test", cookies={SESSION_COOKIE: cookie}
    )


class TestSignOut:
    async def test_a_signed_out_cookie_is_refused_though_someone_kept_it(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        await sign_in(client, world.alice.email, PASSWORD)
        kept = client.cookies[SESSION_COOKIE]
        csrf = await page_csrf(client)
        response = await client.post("/logout", data={"csrf_token": csrf})
        assert response.status_code == 303
        async with _replay(client, kept) as thief:
            assert (await thief.get("/settings")).status_code == 303
            assert (await thief.get("/api/v1/me")).status_code == 401
        assert await open_sessions(database, world.alice.id) == 0

    async def test_signing_out_ends_only_this_browser(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        async with another_browser(client) as other:
            await sign_in(other, world.alice.email, PASSWORD)
            await sign_in(client, world.alice.email, PASSWORD)
            await client.post("/logout", data={"csrf_token": await page_csrf(client)})
            assert (await other.get("/settings")).status_code == 200
        assert await open_sessions(database, world.alice.id) == 1

    async def test_signing_out_without_the_csrf_token_ends_nothing(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        await sign_in(client, world.alice.email, PASSWORD)
        await client.post("/logout", data={"csrf_token": "forged"})
        assert (await client.get("/settings")).status_code == 200


class TestSignOutEverywhere:
    async def test_every_browser_of_the_member_is_signed_out(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        async with another_browser(client) as phone, another_browser(client) as laptop:
            await sign_in(phone, world.alice.email, PASSWORD)
            await sign_in(laptop, world.alice.email, PASSWORD)
            await sign_in(client, world.bob.email, PASSWORD)
            settings = await laptop.get("/settings")
            assert "Sign out everywhere" in settings.text
            response = await laptop.post(
                "/logout/everywhere", data={"csrf_token": await page_csrf(laptop)}
            )
            assert response.status_code == 303 and response.headers["location"] == "/login"
            for browser in (phone, laptop):
                assert (await browser.get("/settings")).status_code == 303
                # An event stream reconnecting with the old cookie is refused too.
                assert (await browser.get("/events")).status_code == 401
        assert await open_sessions(database, world.alice.id) == 0
        assert (await client.get("/settings")).status_code == 200, "others stay signed in"
        (row,) = await audit_rows(database, "user.signed_out_everywhere")
        assert row.details == {"sessions": 2}

    async def test_it_needs_the_csrf_token(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        await sign_in(client, world.alice.email, PASSWORD)
        await client.post("/logout/everywhere", data={"csrf_token": "forged"})
        assert await open_sessions(database, world.alice.id) == 1


class TestLifetime:
    async def test_a_session_past_its_lifetime_is_refused(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        assert (await sign_in(client, world.alice.email, PASSWORD)).status_code == 303
        assert (await client.get("/settings")).status_code == 200
        async with database.transaction() as s:
            await s.execute(update(LoginSession).values(expires_at=utcnow() - timedelta(seconds=1)))
        assert (await client.get("/settings")).status_code == 303

    async def test_a_session_lasts_the_configured_hours(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        before = utcnow()
        response = await sign_in(client, world.alice.email, PASSWORD)
        assert f"Max-Age={14 * 24 * 3600}" in response.headers["set-cookie"]
        async with database.transaction(write=False) as s:
            row = await s.scalar(select(LoginSession))
        assert row is not None
        assert (
            timedelta(hours=14 * 24)
            <= row.expires_at - before
            < timedelta(hours=14 * 24, minutes=1)
        )

    @pytest.mark.parametrize("hours", ["0", "-3", "many", str(400 * 24)])
    def test_a_nonsense_lifetime_is_refused_at_start_up(
        self, hours: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("TOKENDESK_SESSION_HOURS", hours)
        with pytest.raises(ValidationError, match="session_hours"):
            Settings()


class TestSecureCookie:
    async def test_the_cookie_is_secure_when_the_public_url_is_https(
        self, database: Database, world: World, settings: Settings
    ) -> None:
        public = settings.model_copy(update={"public_url": "https://tokens.example.com"})
        app = create_app(public, database=database)
        # Behind a proxy that ends TLS, the app itself is reached over plain http.
        async with (
            serving(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://test"
            ) as http,
        ):
            form = await http.get("/login")
            assert "secure" in form.headers["set-cookie"].lower()
            token = LOGIN_TOKEN.search(form.text)
            assert token is not None
            response = await http.post(
                "/login",
                data={"email": world.alice.email, "password": PASSWORD, "login_token": token[1]},
                headers={"Cookie": f"tokendesk_login={form.cookies['tokendesk_login']}"},
            )
        assert response.status_code == 303
        session_cookie = next(
            value for value in response.headers.get_list("set-cookie") if SESSION_COOKIE in value
        )
        assert "secure" in session_cookie.lower()

    async def test_the_cookie_is_not_secure_on_plain_http_without_a_public_url(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await sign_in(client, world.alice.email, PASSWORD)
        assert "secure" not in response.headers["set-cookie"].lower()

    @pytest.mark.parametrize("url", ["tokens.example.com", "ftp://tokens.example.com", "https://"])
    def test_a_public_url_that_is_no_web_address_is_refused(
        self, url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("TOKENDESK_PUBLIC_URL", url)
        with pytest.raises(ValidationError, match="public_url"):
            Settings()
