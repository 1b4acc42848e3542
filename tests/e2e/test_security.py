"""The pages under their Content-Security-Policy: everything works, nothing is refused."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect

from tests.e2e.chat_site import (
    DESKTOP,
    MEMBERS,
    PASSWORD,
    ChatSite,
    needs_chromium,
    open_page,
    shoot,
    sign_in,
    submit_sign_in,
)

pytestmark = [pytest.mark.e2e, needs_chromium]

# Each violation is also reported to the page as an event; the console line alone can
# be missed when the page navigates away at once.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(`${event.violatedDirective} ${event.blockedURI}`);
});
"""


class Watched:
    def __init__(self, page: Page) -> None:
        self.page = page
        self.console: list[str] = []
        page.on("console", self._console)
        page.add_init_script(RECORD_VIOLATIONS)

    def _console(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            self.console.append(f"{self.page.url}: {message.text[:120]}")

    def assert_clean(self) -> None:
        reported = self.page.evaluate("window.__cspViolations || []")
        assert reported == [] and self.console == [], (reported, self.console)


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    with open_page(browser) as page:
        yield Watched(page)


def sign_in_as_admin(page: Page, site: ChatSite) -> None:
    submit_sign_in(page, site.url, "admin@e2e.example", PASSWORD, next_path="/admin/requests")
    page.wait_for_url(re.compile(r"/admin/requests"))


class TestContentSecurityPolicy:
    def test_the_chat_app_and_settings_run_with_no_violation(
        self, watched: Watched, site: ChatSite
    ) -> None:
        page = watched.page
        page.goto(f"{site.url}/login")
        shoot(page, "login-1280x800")
        sign_in(page, site, "guarded")
        prompt = page.get_by_label("Message", exact=True)
        prompt.fill("Hello under a strict policy")
        prompt.press("Enter")
        expect(page.locator(".msg-assistant .bubble").last).to_contain_text("demo", timeout=10_000)
        expect(page.locator(".msg-assistant.streaming")).to_have_count(0, timeout=10_000)
        page.get_by_role("button", name="Request more tokens").first.click()
        dialog = page.get_by_role("dialog", name="Request more tokens")
        expect(dialog).to_be_visible()
        page.keyboard.press("Escape")
        watched.assert_clean()

        page.goto(f"{site.url}/settings")
        page.get_by_label("Key name").fill("policy check")
        page.get_by_role("button", name="Create key").click()
        expect(page.locator("#new-key")).to_be_visible()
        shoot(page, "settings-1280x800")
        watched.assert_clean()

    def test_the_admin_center_runs_with_no_violation(
        self, watched: Watched, site: ChatSite
    ) -> None:
        page = watched.page
        sign_in_as_admin(page, site)
        expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
        page.get_by_role("link", name="Users").first.click()
        page.wait_for_url(re.compile(r"/admin/users"))
        page.locator("#users-q").fill("guarded")
        expect(page.locator("table tbody tr")).to_have_count(1)
        page.goto(f"{site.url}/admin/analytics")
        expect(page.locator("canvas").first).to_be_visible()
        page.goto(f"{site.url}/admin/settings")
        page.goto(f"{site.url}/admin/teams")
        page.goto(f"{site.url}/admin/audit")
        watched.assert_clean()


class TestPasswordForm:
    def test_a_member_changes_their_password_on_the_settings_page(
        self, watched: Watched, site: ChatSite
    ) -> None:
        page = watched.page
        sign_in(page, site, "passworder")
        page.goto(f"{site.url}/settings")
        page.get_by_label("Current password").fill(PASSWORD)
        page.get_by_label("New password").fill("a brand new passphrase")
        page.get_by_role("button", name="Change password").click()
        expect(
            page.get_by_role("status").filter(has_text="Your password is changed")
        ).to_be_visible()
        shoot(page, "settings-password-changed-1280x800")
        watched.assert_clean()


class TestSignOutEverywhere:
    def test_another_browser_is_signed_out_and_its_stream_refused(
        self, browser: Browser, site: ChatSite
    ) -> None:
        first = browser.new_context(viewport=DESKTOP)
        second = browser.new_context(viewport=DESKTOP)
        try:
            phone, laptop = first.new_page(), second.new_page()
            sign_in(phone, site, "guarded")
            sign_in(laptop, site, "guarded")
            laptop.goto(f"{site.url}/settings")
            laptop.get_by_role("button", name="Sign out everywhere").click()
            laptop.wait_for_url(re.compile(r"/login"))
            # The other browser's next request with its old cookie is refused.
            status = phone.evaluate("fetch('/api/v1/me').then((r) => r.status)")
            assert status == 401
            phone.goto(f"{site.url}/settings")
            expect(phone).to_have_url(re.compile(r"/login\?next=/settings"))
            assert MEMBERS["guarded"][0]
        finally:
            first.close()
            second.close()
