"""Signing in with the organisation's identity provider, in Chromium: the button on
/login, the provider's own form (a real OpenID Connect provider on 127.0.0.1), and
back in tokendesk, signed in as the person the directory describes."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import oidc_provider_mock
import pytest
from playwright.sync_api import Page, Route, expect

from tests.accounts.oidc_support import Provider, serve
from tests.e2e.chat_site import (
    PHONE,
    ChatSite,
    chat_site,
    needs_chromium,
    pending_id,
    remaining,
    request_tokens,
)

pytestmark = [pytest.mark.e2e, needs_chromium]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "sso"
# chat_site's organization and its default allocation.
ORGANIZATION = "E2E Org"
DEFAULT_ALLOCATION = 50_000
PROVIDER_OPTIONS: dict[str, Any] = {
    "organization": ORGANIZATION,
    "allowed_domains": ["corp.example"],
    "role_map": {"ai-admins": "org_admin"},
    "team_map": {"research": "Research"},
}


@dataclass(frozen=True)
class SsoSite:
    site: ChatSite
    provider: Provider

    @property
    def url(self) -> str:
        return self.site.url


@pytest.fixture(scope="module")
def sso(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SsoSite]:
    """The chat site with the provider ``corp`` ("Corp SSO") for its organization."""
    with pytest.MonkeyPatch.context() as env, contextlib.ExitStack() as stack:
        provider = Provider(stack.enter_context(serve(oidc_provider_mock.app(require_nonce=True))))
        env.setenv("TOKENDESK_OIDC_PROVIDERS", provider.config(**PROVIDER_OPTIONS))
        # The server inherits this process's environment. Authlib's switch for plain http
        # is the provider's business only: tokendesk talks to whatever issuer it is given,
        # so its server starts without it.
        env.delenv("AUTHLIB_INSECURE_TRANSPORT", raising=False)
        site = stack.enter_context(chat_site(tmp_path_factory.mktemp("sso")))
        env.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")
        yield SsoSite(site=site, provider=provider)


def starting(prefix: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(prefix))


def only_loopback(page: Page) -> None:
    """The provider's pages link a stylesheet from a CDN; nothing leaves 127.0.0.1."""

    def route(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            route.abort()

    page.route("**/*", route)


def shoot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), animations="disabled")


def authorize_at_provider(page: Page, sso: SsoSite, sub: str) -> None:
    """Click "Sign in with Corp SSO" on tokendesk's sign-in page, then sign in as ``sub``
    on the provider's form."""
    only_loopback(page)
    page.get_by_role("link", name="Sign in with Corp SSO").click()
    page.wait_for_url(starting(f"{sso.provider.issuer}/oauth2/authorize?"))
    page.get_by_placeholder("sub").fill(sub)
    page.get_by_role("button", name="Authorize", exact=True).click()


def api_user(sso: SsoSite, email: str) -> dict[str, Any]:
    with sso.site.admin() as api:
        response = api.get("/api/v1/users", params={"q": email})
        response.raise_for_status()
    (found,) = [u for u in response.json()["items"] if u["email"] == email]
    return dict(found)


class TestLoginPage:
    def test_the_sign_in_page_offers_the_provider_beside_the_password_form(
        self, page: Page, sso: SsoSite
    ) -> None:
        page.goto(f"{sso.url}/login")
        button = page.get_by_role("link", name="Sign in with Corp SSO")
        expect(button).to_be_visible()
        expect(page.get_by_role("button", name="Sign in", exact=True)).to_be_visible()
        # The password button and the provider's are one width, one under the other.
        password_box = page.get_by_role("button", name="Sign in", exact=True).bounding_box()
        sso_box = button.bounding_box()
        assert password_box is not None and sso_box is not None
        assert sso_box["width"] == pytest.approx(password_box["width"], abs=1)
        assert sso_box["y"] > password_box["y"] + password_box["height"]
        shoot(page, "login-with-sso-desktop-1280x800")
        page.set_viewport_size(PHONE)
        expect(button).to_be_in_viewport()
        shoot(page, "login-with-sso-phone-375x812")


class TestSignIn:
    def test_a_new_person_lands_in_the_chat_app_and_sees_a_grant_arrive_live(
        self, page: Page, sso: SsoSite
    ) -> None:
        email = "mia@corp.example"
        sso.provider.set_user(
            "sub-mia", email=email, email_verified=True, name="Mia Provisioned", groups=["research"]
        )
        page.goto(f"{sso.url}/login")
        authorize_at_provider(page, sso, "sub-mia")

        page.wait_for_url(f"{sso.url}/")
        expect(page.locator("html")).to_have_attribute("data-events", "live")
        expect(page.locator(".usermenu-name")).to_have_text("Mia Provisioned")
        assert remaining(page) == DEFAULT_ALLOCATION
        mia = api_user(sso, email)
        assert (mia["role"], mia["team"]["name"]) == ("member", "Research")
        shoot(page, "chat-after-sso-desktop-1280x800")

        page.evaluate("window.__samePage = true")
        request_tokens(page, "10,000", "Onboarding research notes")
        request_id = pending_id(sso.site, email)
        with sso.site.admin() as api:
            response = api.post(
                f"/api/v1/token-requests/{request_id}/approve", json={"note": "Welcome aboard"}
            )
            assert response.status_code == 200, response.text
        expect(page.locator("#ind-remaining")).to_have_text(
            f"{DEFAULT_ALLOCATION + 10_000:,}", timeout=2000
        )
        expect(page.locator(".toast", has_text="Approved: +10,000 tokens")).to_be_visible(
            timeout=2000
        )
        assert page.evaluate("window.__samePage") is True
        shoot(page, "chat-after-sso-approved-desktop-1280x800")

    def test_a_directory_admin_asking_for_the_admin_center_lands_there(
        self, page: Page, sso: SsoSite
    ) -> None:
        sso.provider.set_user(
            "sub-oz", email="oz@corp.example", email_verified=True, name="Oz", groups=["ai-admins"]
        )
        page.goto(f"{sso.url}/admin")
        page.wait_for_url(starting(f"{sso.url}/login?next="))
        authorize_at_provider(page, sso, "sub-oz")
        page.wait_for_url(starting(f"{sso.url}/admin"))
        expect(page.get_by_role("link", name="Token Requests")).to_be_visible()
        assert api_user(sso, "oz@corp.example")["role"] == "org_admin"

    def test_a_domain_the_provider_may_not_sign_in_is_refused_on_the_sign_in_page(
        self, page: Page, sso: SsoSite
    ) -> None:
        sso.provider.set_user("sub-eve", email="eve@elsewhere.example", email_verified=True)
        page.goto(f"{sso.url}/login")
        authorize_at_provider(page, sso, "sub-eve")
        alert = page.get_by_role("alert")
        expect(alert).to_have_text(
            "Accounts at elsewhere.example may not sign in to tokendesk with Corp SSO."
        )
        assert urlsplit(page.url).path == "/auth/oidc/corp/callback"
        expect(page.get_by_role("link", name="Sign in with Corp SSO")).to_be_visible()
        shoot(page, "login-sso-refused-desktop-1280x800")
        with sso.site.admin() as api:
            found = api.get("/api/v1/users", params={"q": "eve@elsewhere.example"}).json()
        assert found["items"] == []


class TestSignOut:
    def test_signing_out_ends_the_session_at_the_provider_too_and_returns_to_login(
        self, page: Page, sso: SsoSite
    ) -> None:
        sso.provider.set_user("sub-lou", email="lou@corp.example", email_verified=True, name="Lou")
        page.goto(f"{sso.url}/login")
        authorize_at_provider(page, sso, "sub-lou")
        page.wait_for_url(f"{sso.url}/")
        page.get_by_label("Account menu for Lou").click()
        page.get_by_role("button", name="Sign out").click()

        page.wait_for_url(starting(f"{sso.provider.issuer}/oauth2/end_session?"), timeout=5000)
        page.get_by_role("button", name="End session").click()
        page.wait_for_url(starting(f"{sso.url}/login"))
        page.goto(f"{sso.url}/")
        page.wait_for_url(starting(f"{sso.url}/login"))
        expect(page.get_by_role("link", name="Sign in with Corp SSO")).to_be_visible()
