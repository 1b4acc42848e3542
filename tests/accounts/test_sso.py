"""Signing in with the organisation's identity provider, against a real OpenID Connect
provider on 127.0.0.1 (oidc-provider-mock)."""

from __future__ import annotations

import html
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import func, select

from tests.accounts.oidc_support import Provider, provider, sign_in
from tests.accounts.support import PASSWORD, another_browser
from tests.accounts.support import sign_in as password_sign_in
from tests.factories import World
from tests.ledger_support import balance_of
from tests.serving import serving
from tokendesk.accounts.integrations import create_integration
from tokendesk.accounts.models import IdentityPreset, Organization, Team, TeamOwner, User
from tokendesk.accounts.users import create_user
from tokendesk.app import create_app
from tokendesk.config import Settings
from tokendesk.db import Database

__all__ = ["provider"]


async def user_by_email(database: Database, email: str) -> User | None:
    async with database.transaction(write=False) as s:
        return await s.scalar(select(User).where(func.lower(User.email) == email))


@pytest.fixture
async def tokendesk(
    request: pytest.FixtureRequest,
    database: Database,
    db_url: str,
    provider: Provider,
    world: World,
) -> AsyncIterator[httpx.AsyncClient]:
    """tokendesk with the provider ``corp`` for Acme (the test world's organization)."""
    options: dict[str, Any] = getattr(request, "param", {})
    settings = Settings(
        database_url=db_url,
        demo=True,
        scheduler_enabled=False,
        oidc_providers=provider.config(**options),
    )
    app = create_app(settings, database=database)
    transport = httpx.ASGITransport(app=app)
    async with (
        serving(app),
        httpx.AsyncClient(transport=transport, base_url="http://tokendesk.test") as http,
    ):
        yield http


MAPPED = {
    "role_map": {"ai-admins": "org_admin", "ai-users": "member"},
    "team_map": {"research": "Alpha", "support": "Beta"},
}


class TestFirstSignIn:
    @pytest.mark.parametrize("tokendesk", [MAPPED], indirect=True)
    async def test_a_new_person_is_provisioned_with_the_mapped_team_and_role(
        self, tokendesk: httpx.AsyncClient, provider: Provider, world: World, database: Database
    ) -> None:
        provider.set_user(
            "sub-ann",
            email="ann@corp.local",
            email_verified=True,
            name="Ann Example",
            groups=["ai-admins", "research"],
        )
        r = await sign_in(tokendesk, provider, "sub-ann", next_url="/admin")
        assert r.status_code == 303, r.text
        assert r.headers["location"] == "/admin"
        ann = await user_by_email(database, "ann@corp.local")
        assert ann is not None
        assert (ann.role, ann.team_id, ann.name) == ("org_admin", world.team_a, "Ann Example")
        async with database.transaction(write=False) as s:
            alpha = await s.get(Team, world.team_a)
        assert alpha is not None
        assert (await balance_of(database, ann.id)).allocation == alpha.default_allocation
        me = await tokendesk.get("/api/v1/me")
        assert me.status_code == 200, me.text
        assert me.json()["email"] == "ann@corp.local"


class TestReturningPeople:
    @pytest.mark.parametrize("tokendesk", [MAPPED], indirect=True)
    async def test_a_returning_person_keeps_their_balance_and_follows_the_directory(
        self, tokendesk: httpx.AsyncClient, provider: Provider, world: World, database: Database
    ) -> None:
        provider.set_user(
            "sub-ben", email="ben@corp.local", email_verified=True, groups=["ai-admins", "research"]
        )
        assert (await sign_in(tokendesk, provider, "sub-ben")).status_code == 303
        ben = await user_by_email(database, "ben@corp.local")
        assert ben is not None
        spent = await tokendesk.post(
            "/v1/chat/completions",
            json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]},
            headers={"X-CSRF-Token": await csrf(tokendesk)},
        )
        assert spent.status_code == 200, spent.text
        await tokendesk._transport.app.state.runtime.gateway.settler.drain()  # type: ignore[attr-defined]
        used = (await balance_of(database, ben.id)).used
        assert used > 0
        # The directory moves him: no longer an admin, now in support, with a new address.
        provider.set_user(
            "sub-ben", email="ben.new@corp.local", email_verified=True, groups=["support"]
        )
        assert (await sign_in(tokendesk, provider, "sub-ben")).status_code == 303
        again = await user_by_email(database, "ben@corp.local")
        assert again is not None
        assert again.id == ben.id
        assert (again.role, again.team_id) == ("member", world.team_b)
        assert await user_by_email(database, "ben.new@corp.local") is None
        assert (await balance_of(database, ben.id)).used == used

    async def test_an_existing_account_is_linked_by_a_verified_email(
        self, tokendesk: httpx.AsyncClient, provider: Provider, world: World, database: Database
    ) -> None:
        provider.set_user("sub-alice", email="ALICE@example.com", email_verified=True)
        r = await sign_in(tokendesk, provider, "sub-alice")
        assert r.status_code == 303, r.text
        me = await tokendesk.get("/api/v1/me")
        assert me.json()["id"] == world.alice.id

    async def test_an_account_at_an_internal_domain_is_linked_whatever_the_case(
        self, tokendesk: httpx.AsyncClient, provider: Provider, world: World, database: Database
    ) -> None:
        async with database.transaction() as s:
            dan = await create_user(
                s, organization_id=world.org_id, email="dan@corp.local", name="Dan"
            )
        provider.set_user("sub-dan", email="Dan@Corp.LOCAL", email_verified=True)
        r = await sign_in(tokendesk, provider, "sub-dan")
        assert r.status_code == 303, r.text
        me = await tokendesk.get("/api/v1/me")
        assert me.json()["id"] == dan.id

    async def test_an_unverified_email_does_not_take_over_an_existing_account(
        self, tokendesk: httpx.AsyncClient, provider: Provider, world: World
    ) -> None:
        provider.set_user("sub-mallory", email=world.admin.email, email_verified=False)
        r = await sign_in(tokendesk, provider, "sub-mallory")
        assert r.status_code == 403
        assert "has not verified" in r.text
        assert (await tokendesk.get("/api/v1/me")).status_code == 401


class TestRefusals:
    @pytest.mark.parametrize("tokendesk", [{"allowed_domains": ["corp.local"]}], indirect=True)
    async def test_a_domain_not_allowed_is_refused_with_a_clear_page(
        self, tokendesk: httpx.AsyncClient, provider: Provider, database: Database
    ) -> None:
        provider.set_user("sub-eve", email="eve@elsewhere.example", email_verified=True)
        r = await sign_in(tokendesk, provider, "sub-eve")
        assert r.status_code == 403
        assert "elsewhere.example may not sign in" in r.text
        assert await user_by_email(database, "eve@elsewhere.example") is None

    @pytest.mark.parametrize("tokendesk", [{"allowed_groups": ["staff"]}], indirect=True)
    async def test_a_person_whose_group_was_removed_can_no_longer_sign_in(
        self, tokendesk: httpx.AsyncClient, provider: Provider
    ) -> None:
        provider.set_user("sub-gus", email="gus@corp.local", email_verified=True, groups=["staff"])
        assert (await sign_in(tokendesk, provider, "sub-gus")).status_code == 303
        provider.set_user("sub-gus", email="gus@corp.local", email_verified=True, groups=[])
        tokendesk.cookies.clear()
        r = await sign_in(tokendesk, provider, "sub-gus")
        assert r.status_code == 403
        assert "not in a group allowed" in r.text

    async def test_a_person_deactivated_in_tokendesk_stays_out(
        self, tokendesk: httpx.AsyncClient, provider: Provider, world: World, database: Database
    ) -> None:
        async with database.transaction() as s:
            bob = await s.get(User, world.bob.id)
            assert bob is not None
            bob.is_active = False
        provider.set_user("sub-bob", email=world.bob.email, email_verified=True)
        r = await sign_in(tokendesk, provider, "sub-bob")
        assert r.status_code == 403
        assert "deactivated" in r.text

    async def test_a_tampered_state_is_refused(
        self, tokendesk: httpx.AsyncClient, provider: Provider
    ) -> None:
        provider.set_user("sub-tam", email="tam@corp.local", email_verified=True)
        start = await tokendesk.get("/auth/oidc/corp/login")
        async with httpx.AsyncClient(timeout=10) as browser:
            chosen = await browser.post(start.headers["location"], data={"sub": "sub-tam"})
        back = urlsplit(chosen.headers["location"])
        query = {k: v[0] for k, v in parse_qs(back.query).items()}
        query["state"] = query["state"][:-2] + "xx"
        r = await tokendesk.get(back.path, params=query)
        assert r.status_code == 401
        assert (await tokendesk.get("/api/v1/me")).status_code == 401

    async def test_a_callback_without_the_flow_cookie_is_refused(
        self, tokendesk: httpx.AsyncClient, provider: Provider
    ) -> None:
        r = await tokendesk.get("/auth/oidc/corp/callback", params={"code": "x", "state": "y"})
        assert r.status_code == 400
        assert "expired or was not started here" in r.text

    async def test_an_unknown_provider_is_not_found(self, tokendesk: httpx.AsyncClient) -> None:
        assert (await tokendesk.get("/auth/oidc/nope/login")).status_code == 404


class TestSignOut:
    async def test_signing_out_ends_the_session_and_signs_out_at_the_provider(
        self, tokendesk: httpx.AsyncClient, provider: Provider
    ) -> None:
        provider.set_user("sub-liz", email="liz@corp.local", email_verified=True)
        first = await sign_in(tokendesk, provider, "sub-liz")
        assert first.status_code == 303, first.text[-1500:]
        r = await tokendesk.post("/logout", data={"csrf_token": await csrf(tokendesk)})
        assert r.status_code == 200, r.text
        target = html.unescape(
            r.text.split('http-equiv="refresh" content="0; url=')[1].split('"')[0]
        )
        assert target.startswith(f"{provider.issuer}/oauth2/end_session")
        assert "id_token_hint=" in target
        assert "tokendesk_sso" in r.headers.get("set-cookie", "")
        assert (await tokendesk.get("/api/v1/me")).status_code == 401


class TestLoginPage:
    async def test_shows_a_button_per_provider(self, tokendesk: httpx.AsyncClient) -> None:
        page = await tokendesk.get("/login", params={"next": "/admin"})
        assert "Sign in with Corp SSO" in page.text
        assert "/auth/oidc/corp/login?next=%2Fadmin" in page.text


async def csrf(http: httpx.AsyncClient) -> str:
    """The signed-in page's CSRF token, as the chat page holds it."""
    page = await http.get("/chat")
    assert page.status_code == 200, page.text
    marker = 'name="csrf-token" content="'
    start = page.text.index(marker) + len(marker)
    return page.text[start : page.text.index('"', start)]


class TestPasswordsTurnedOff:
    async def test_only_single_sign_on_and_the_admins_passwords_sign_in(
        self, tokendesk: httpx.AsyncClient, provider: Provider, world: World
    ) -> None:
        off = await tokendesk.patch(
            "/api/v1/organization", json={"password_sign_in": False}, headers=world.admin.headers
        )
        assert off.status_code == 200, off.text
        assert off.json()["password_sign_in"] is False

        async with another_browser(tokendesk) as alice:
            refused = await password_sign_in(alice, world.alice.email, PASSWORD)
            assert refused.status_code == 403
            assert "identity provider" in refused.text
            assert "Sign in with Corp SSO" in refused.text
            assert (await alice.get("/api/v1/me")).status_code == 401
            # A wrong password still reads as one: nothing tells a guesser more.
            wrong = await password_sign_in(alice, world.alice.email, "not her password")
            assert wrong.status_code == 401

        async with another_browser(tokendesk) as admin:
            # The admins keep their password, to get in when the provider cannot.
            assert (await password_sign_in(admin, world.admin.email, PASSWORD)).status_code == 303
            assert (await admin.get("/api/v1/me")).status_code == 200

        provider.set_user("sub-amy", email="amy@corp.local", email_verified=True)
        assert (await sign_in(tokendesk, provider, "sub-amy")).status_code == 303
        assert (await tokendesk.get("/api/v1/me")).json()["email"] == "amy@corp.local"

    async def test_turning_passwords_off_ends_the_sessions_a_password_opened(
        self, tokendesk: httpx.AsyncClient, provider: Provider, world: World
    ) -> None:
        provider.set_user("sub-sso", email="sso@corp.local", email_verified=True)
        assert (await sign_in(tokendesk, provider, "sub-sso")).status_code == 303
        async with another_browser(tokendesk) as alice, another_browser(tokendesk) as admin:
            assert (await password_sign_in(alice, world.alice.email, PASSWORD)).status_code == 303
            assert (await password_sign_in(admin, world.admin.email, PASSWORD)).status_code == 303
            assert (await alice.get("/api/v1/me")).status_code == 200
            off = await tokendesk.patch(
                "/api/v1/organization",
                json={"password_sign_in": False},
                headers=world.admin.headers,
            )
            assert off.status_code == 200, off.text
            assert (await alice.get("/api/v1/me")).status_code == 401
            # The break-glass admin and the single sign-on session carry on.
            assert (await admin.get("/api/v1/me")).status_code == 200
        assert (await tokendesk.get("/api/v1/me")).status_code == 200

    async def test_passwords_stay_on_where_no_provider_signs_people_in(
        self, client: httpx.AsyncClient, world: World, database: Database
    ) -> None:
        r = await client.patch(
            "/api/v1/organization", json={"password_sign_in": False}, headers=world.admin.headers
        )
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "password_sign_in"
        async with database.transaction(write=False) as s:
            org = await s.get(Organization, world.org_id)
        assert org is not None and org.password_sign_in is True


class TestSignInWays:
    async def test_the_users_pages_show_how_each_person_signs_in_and_when(
        self, tokendesk: httpx.AsyncClient, provider: Provider, world: World, database: Database
    ) -> None:
        provider.set_user("sub-zoe", email="zoe@corp.local", email_verified=True, name="Zoe")
        assert (await sign_in(tokendesk, provider, "sub-zoe")).status_code == 303
        async with database.transaction() as s:
            _, key = await create_integration(
                s,
                organization_id=world.org_id,
                name="Open WebUI",
                preset=IdentityPreset.OPEN_WEBUI,
                actor_id=world.admin.id,
            )
        chat = await tokendesk.post(
            "/v1/chat/completions",
            json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]},
            headers={
                "Authorization": f"Bearer {key}",
                "X-OpenWebUI-User-Id": "owui-zoe",
                "X-OpenWebUI-User-Email": "zoe@corp.local",
            },
        )
        assert chat.status_code == 200, chat.text
        zoe = await user_by_email(database, "zoe@corp.local")
        assert zoe is not None

        async with another_browser(tokendesk) as admin:
            assert (await password_sign_in(admin, world.admin.email, PASSWORD)).status_code == 303
            listing = (await admin.get("/admin/users", params={"q": "zoe"})).text
            assert "Corp SSO" in listing and "Open WebUI" in listing
            assert "last: just now" in listing
            assert "Password" not in listing.split("<tbody>")[1]  # Zoe has no password
            own = (await admin.get("/admin/users", params={"q": world.admin.email})).text
            assert "Password" in own.split("<tbody>")[1]
            detail = (await admin.get(f"/admin/users/{zoe.id}")).text
            assert "sub-zoe" in detail and "owui-zoe" in detail
            assert "single sign-on" in detail and "chat app" in detail


LEADS = {
    "role_map": {"team-leads": "team_owner"},
    "team_map": {"research": "Alpha", "support": "Beta"},
}


class TestTeamOwnersFromTheDirectory:
    @pytest.mark.parametrize("tokendesk", [LEADS], indirect=True)
    async def test_a_team_owner_by_the_directory_owns_the_team_it_puts_them_in(
        self, tokendesk: httpx.AsyncClient, provider: Provider, world: World, database: Database
    ) -> None:
        provider.set_user(
            "sub-tia",
            email="tia@corp.local",
            email_verified=True,
            groups=["team-leads", "research"],
        )
        assert (await sign_in(tokendesk, provider, "sub-tia")).status_code == 303
        tia = await user_by_email(database, "tia@corp.local")
        assert tia is not None
        assert (tia.role, tia.team_id) == ("team_owner", world.team_a)
        async with database.transaction(write=False) as s:
            owned = (
                await s.scalars(select(TeamOwner.team_id).where(TeamOwner.user_id == tia.id))
            ).all()
        assert owned == [world.team_a]
        queue = await tokendesk.get("/admin/requests")
        assert queue.status_code == 200, queue.text
