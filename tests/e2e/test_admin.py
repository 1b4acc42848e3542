"""The admin center in a real browser against a real server.

One server process (uvicorn, SQLite) serves the module; every scenario uses its
own requesters so the scenarios do not depend on each other's leftovers. The
last test runs two server processes on one PostgreSQL database.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.chat_site import submit_sign_in
from tests.web_admin.acme_site import (
    BULK_SIZE,
    CROWD_SIZE,
    PASSWORD,
    Site,
    own_postgres_database,
    prepare,
)
from tests.web_admin.live_server import running
from tokendesk.ledger.periods import next_reset
from tokendesk.web.templating import local_datetime

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "admin"
LAPTOP = {"width": 1280, "height": 800}
LIVE_TIMEOUT_MS = 10_000
# With more than a page waiting, a fresh request shows at the top of this view.
NEWEST_FIRST = "/admin/requests?sort=-created_at"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="browser tests need Debian's Chromium at /usr/bin/chromium "
        "(apt-get install chromium)",
    ),
]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("admin-e2e")
    url = f"sqlite+aiosqlite:///{folder / 'tokendesk.db'}"
    keys = prepare(url)
    with running(url, log_path=folder / "server.log", secret=secrets.token_urlsafe(32)) as server:
        yield Site(server=server, keys=keys)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield instance
        instance.close()


class Contexts:
    """Browser contexts for one test; each fails the test on a JavaScript error."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.opened: list[Any] = []
        self.errors: list[str] = []

    def page(self) -> Any:
        context = self.browser.new_context(viewport=LAPTOP)
        self.opened.append(context)
        page = context.new_page()
        page.set_default_timeout(LIVE_TIMEOUT_MS)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        return page

    def close(self) -> None:
        for context in self.opened:
            context.close()


@pytest.fixture
def contexts(browser: Any) -> Iterator[Contexts]:
    opened = Contexts(browser)
    yield opened
    opened.close()
    assert opened.errors == [], f"JavaScript errors on the page: {opened.errors}"


def sign_in(page: Any, base_url: str, email: str, path: str = NEWEST_FIRST) -> None:
    submit_sign_in(page, base_url, email, PASSWORD, next_path=path)
    page.wait_for_url(re.compile(re.escape(f"{base_url}{path.split('?')[0]}")))


def wait_live(page: Any) -> None:
    # Set once the event stream's snapshot has arrived: from now on nothing is missed.
    expect(page.locator("#live-status")).to_have_attribute("data-state", "live")


def badge(page: Any) -> int:
    return int(page.locator("#pending-badge").get_attribute("data-count") or 0)


def shoot(page: Any, name: str, *, full_page: bool = True) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    if full_page:
        # A scrolled page would capture the sticky sidebar halfway down.
        page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page, animations="disabled")


class TestLiveQueue:
    def test_a_new_request_appears_with_the_badge_without_reload(
        self, site: Site, contexts: Contexts
    ) -> None:
        page = contexts.page()
        sign_in(page, site.url, site.email("admin"))
        wait_live(page)
        before = badge(page)
        request_id = site.submit("alice", 12_000, "Customer interviews to summarise")
        row = page.locator(f"#request-{request_id}")
        expect(row).to_be_visible()
        expect(row).to_contain_text("alice@acme.example")
        expect(row).to_contain_text("12,000")
        expect(page.locator("#pending-badge")).to_have_text(str(before + 1))
        expect(page.locator('[data-tab="pending"] .tab-count')).to_have_text(str(before + 1))
        shoot(page, "requests-pending")

    def test_approving_with_an_edited_amount_reaches_the_members_balance(
        self, site: Site, contexts: Contexts
    ) -> None:
        request_id = site.submit("amy", 20_000, "Translating the onboarding guide")
        before = site.me("amy")["balance"]["remaining"]
        page = contexts.page()
        sign_in(page, site.url, site.email("admin"))
        page.locator(f"#approve-{request_id}").click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_be_visible()
        amount = dialog.get_by_label("Tokens to grant")
        expect(amount).to_have_value("20000")
        amount.fill("25000")
        dialog.get_by_role("button", name="Approve").click()
        # The service's own message, next to the field it names; nothing was decided.
        expect(dialog.locator("#decide-amount-error")).to_have_text(
            "must be at most the requested 20000 tokens; to give more, adjust the balance"
        )
        expect(amount).to_have_attribute("aria-invalid", "true")
        amount.fill("12000")
        dialog.get_by_label("Note to Amy Alpha").fill("12k now, more next month")
        shoot(page, "approve-dialog", full_page=False)
        dialog.get_by_role("button", name="Approve").click()
        expect(dialog).to_be_hidden()
        expect(page.locator("#toasts")).to_contain_text("Approved 12,000 tokens for Amy Alpha.")
        expect(page.locator(f"#request-{request_id}")).to_have_count(0)
        assert site.me("amy")["balance"]["remaining"] == before + 12_000

    def test_select_all_then_bulk_reject_thirty_requests(
        self, site: Site, contexts: Contexts
    ) -> None:
        page = contexts.page()
        sign_in(page, site.url, site.email("admin"))
        page.get_by_label("Team").select_option(label="Bulk")
        expect(page.locator("#queue .row-select")).to_have_count(BULK_SIZE)
        page.get_by_label("Select every pending request on this page").check()
        total = sum(1_000 + index for index in range(BULK_SIZE))
        expect(page.locator("#bulk-summary")).to_have_text(
            f"{BULK_SIZE} requests selected · {total:,} tokens"
        )
        page.get_by_role("button", name="Reject selected").click()
        dialog = page.get_by_role("dialog")
        expect(dialog.get_by_role("heading")).to_have_text(f"Reject {BULK_SIZE} requests?")
        expect(dialog.locator("#bulk-statement")).to_contain_text(f"{total:,} tokens")
        dialog.get_by_label("Note to everyone").fill("Budget freeze until the next reset")
        shoot(page, "bulk-confirm", full_page=False)
        dialog.get_by_role("button", name=f"Reject {BULK_SIZE}").click()
        expect(dialog.get_by_role("heading")).to_have_text(f"Rejected {BULK_SIZE} requests")
        expect(dialog).to_contain_text("Nothing was skipped.")
        shoot(page, "bulk-summary", full_page=False)
        dialog.get_by_role("button", name="Done").click()
        expect(page.locator("#queue .row-select")).to_have_count(0)
        expect(page.locator("#bulk-bar")).to_be_hidden()
        page.goto(f"{site.url}/admin/requests?status=rejected")
        expect(page.locator('[data-tab="rejected"] .tab-count')).to_have_text(str(BULK_SIZE))
        shoot(page, "requests-rejected")

    def test_select_all_offers_every_matching_request_beyond_the_page(
        self, site: Site, contexts: Contexts
    ) -> None:
        page = contexts.page()
        sign_in(page, site.url, site.email("admin"))
        page.get_by_label("Team").select_option(label="Crowd")
        # The unfiltered queue has a full page of 50 too: wait for the filtered one.
        expect(page.locator("#queue")).to_have_attribute("data-matching-pending", str(CROWD_SIZE))
        expect(page.locator("#queue .row-select")).to_have_count(50)
        page.get_by_label("Select every pending request on this page").check()
        offer = page.locator("#select-matching")
        expect(offer).to_have_text(f"Select all {CROWD_SIZE} matching")
        offer.click()
        expect(page.locator("#bulk-summary")).to_have_text(
            f"All {CROWD_SIZE} pending requests matching these filters are selected."
        )
        page.get_by_role("button", name="Approve selected").click()
        dialog = page.get_by_role("dialog")
        total = sum(1_000 + index for index in range(CROWD_SIZE))
        expect(dialog.get_by_role("heading")).to_have_text(f"Approve {CROWD_SIZE} requests?")
        expect(dialog.locator("#bulk-statement")).to_contain_text(f"{total:,} tokens")
        dialog.get_by_role("button", name="Cancel").click()
        expect(dialog).to_be_hidden()
        # Unticking one row narrows the selection back to the ticked rows.
        page.locator("#queue .row-select").first.uncheck()
        expect(page.locator("#bulk-summary")).to_contain_text("49 requests selected")

    def test_two_admins_approve_the_same_request_and_one_is_told(
        self, site: Site, contexts: Contexts
    ) -> None:
        request_id = site.submit("bob", 5_000, "Load-testing the new endpoint")
        first, second = contexts.page(), contexts.page()
        sign_in(first, site.url, site.email("admin"))
        sign_in(second, site.url, site.email("admin2"))
        wait_live(second)
        second.locator(f"#approve-{request_id}").click()
        second_dialog = second.get_by_role("dialog")
        # Type once the dialog has settled, as a person would: its first field has focus.
        expect(second_dialog.locator("[autofocus]")).to_be_focused()
        second_dialog.get_by_label("Note to Bob Beta").fill("typed while someone else decides")
        first.locator(f"#approve-{request_id}").click()
        first.get_by_role("dialog").get_by_role("button", name="Approve").click()
        expect(first.locator("#toasts")).to_contain_text("Approved 5,000 tokens for Bob Beta.")
        # The decided row leaves the second admin's queue live; the open dialog stays as it was.
        expect(second.locator(f"#request-{request_id}")).to_have_count(0)
        expect(second_dialog.get_by_label("Note to Bob Beta")).to_have_value(
            "typed while someone else decides"
        )
        second_dialog.get_by_role("button", name="Approve").click()
        expect(second_dialog.get_by_role("alert")).to_contain_text("already approved by Ada Admin")
        shoot(second, "already-decided", full_page=False)
        with site.api("admin") as api:
            decided = api.get(f"/api/v1/token-requests/{request_id}").json()
        assert decided["status"] == "approved" and decided["decided_by"]["name"] == "Ada Admin"

    def test_a_late_second_load_leaves_the_open_dialog_as_typed(
        self, site: Site, contexts: Contexts
    ) -> None:
        request_id = site.submit("bob", 4_000, "Two clicks, one dialog")
        page = contexts.page()
        sign_in(page, site.url, site.email("admin"))
        wait_live(page)
        # Two loads into the dialog, both sent before it opens (a click replayed on a
        # row a live refresh re-rendered): the second is answered only once the admin
        # has typed into the dialog the first one opened.
        held: list[Any] = []

        def hold(route: Any) -> None:
            held.append(route)

        page.route(f"**/admin/requests/{request_id}/reject", hold)
        page.evaluate(
            """id => {
                document.getElementById("approve-" + id).click();
                document.getElementById("reject-" + id).click();
            }""",
            request_id,
        )
        dialog = page.get_by_role("dialog")
        expect(dialog.locator("[autofocus]")).to_be_focused()
        dialog.get_by_label("Note to Bob Beta").fill("typed before the late answer")
        assert len(held) == 1
        with page.expect_response(f"**/admin/requests/{request_id}/reject"):
            held[0].continue_()
        expect(dialog.get_by_role("heading")).to_have_text("Approve request from Bob Beta")
        expect(dialog.get_by_label("Note to Bob Beta")).to_have_value(
            "typed before the late answer"
        )

    def test_team_owner_sees_only_their_team(self, site: Site, contexts: Contexts) -> None:
        mine = site.submit("ana", 3_000, "Alpha work")
        other = site.submit("bea", 4_000, "Beta work")
        page = contexts.page()
        sign_in(page, site.url, site.email("owner"))
        wait_live(page)
        expect(page.locator(f"#request-{mine}")).to_be_visible()
        expect(page.locator(f"#request-{other}")).to_have_count(0)
        teams = page.locator("#queue tbody tr td:nth-child(3)").all_inner_texts()
        assert teams and set(teams) == {"Alpha"}
        expect(page.get_by_label("Team").locator("option")).to_have_text(["All teams", "Alpha"])
        shoot(page, "requests-team-owner")

    def test_keyboard_opens_and_closes_a_decision(self, site: Site, contexts: Contexts) -> None:
        request_id = site.submit("kai", 1_500, "Keyboard check")
        page = contexts.page()
        sign_in(page, site.url, site.email("admin"))
        button = page.locator(f"#reject-{request_id}")
        button.focus()
        page.keyboard.press("Enter")
        dialog = page.get_by_role("dialog")
        expect(dialog.get_by_label("Note to Kai Beta")).to_be_focused()
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
        expect(button).to_be_focused()


class TestPages:
    def test_every_admin_page_fits_a_laptop_screen(self, site: Site, contexts: Contexts) -> None:
        page = contexts.page()
        sign_in(page, site.url, site.email("admin"))
        with site.api("admin") as api:
            alice = api.get("/api/v1/users", params={"q": "alice"}).json()["items"][0]["id"]
            alpha = next(t["id"] for t in api.get("/api/v1/teams").json() if t["name"] == "Alpha")
        pages = {
            "requests-all": "/admin/requests?status=all",
            "users": "/admin/users",
            "user-detail": f"/admin/users/{alice}",
            "teams": "/admin/teams",
            "team-detail": f"/admin/teams/{alpha}",
            "settings": "/admin/settings",
            "audit": "/admin/audit",
            "analytics": "/admin/analytics",
        }
        for name, path in pages.items():
            page.goto(f"{site.url}{path}")
            expect(page.locator("#active-organization")).to_have_text("Acme")
            wide = page.evaluate("document.documentElement.scrollWidth > window.innerWidth")
            assert not wide, f"{path} scrolls sideways at {LAPTOP['width']} px"
            shoot(page, name)
        page.get_by_role("link", name="Users", exact=True).click()
        page.get_by_role("button", name="+ New user").click()
        expect(page.get_by_role("dialog").get_by_label("Email")).to_be_focused()
        shoot(page, "new-user-dialog", full_page=False)


class TestSettings:
    def test_a_settings_change_shows_the_new_next_reset_date(
        self, site: Site, contexts: Contexts
    ) -> None:
        page = contexts.page()
        sign_in(page, site.url, site.email("admin"), "/admin/settings")
        expected = next_reset(datetime.now(UTC), reset_day=17, timezone="Asia/Tokyo")
        shown = local_datetime(expected, "Asia/Tokyo")
        page.get_by_label("Time zone", exact=True).fill("Asia/Tokyo")
        page.get_by_label("Reset day of the month").select_option("17")
        expect(page.locator("#next-reset-date")).to_have_text(shown)
        expect(page.locator("#current-next-reset")).not_to_have_text(shown)
        page.get_by_role("button", name="Save settings").click()
        expect(page.locator("#toasts")).to_contain_text("Settings saved.")
        expect(page.locator("#current-next-reset")).to_have_text(shown)
        shoot(page, "settings-saved")
        reset_at = datetime.fromisoformat(site.me("alice")["balance"]["next_reset_at"])
        assert reset_at == expected


class TestTwoServers:
    def test_a_request_through_one_process_appears_live_in_the_other(
        self, tmp_path_factory: pytest.TempPathFactory, browser: Any, contexts: Contexts
    ) -> None:
        base = os.environ.get("TOKENDESK_TEST_DATABASE_URL", "")
        if not base.startswith("postgresql"):
            pytest.skip("needs PostgreSQL: TOKENDESK_TEST_DATABASE_URL is not set")
        folder = tmp_path_factory.mktemp("admin-e2e-pg")
        with own_postgres_database(base, "admin_e2e") as url:
            keys = prepare(url)
            secret = secrets.token_urlsafe(32)
            with (
                running(url, log_path=folder / "a.log", secret=secret) as process_a,
                running(url, log_path=folder / "b.log", secret=secret) as process_b,
            ):
                page = contexts.page()
                sign_in(page, process_b.url, "admin@acme.example")
                wait_live(page)
                before = badge(page)
                site_a = Site(server=process_a, keys=keys)
                request_id = site_a.submit("alice", 7_777, "through process A")
                expect(page.locator(f"#request-{request_id}")).to_contain_text("7,777")
                expect(page.locator("#pending-badge")).to_have_text(str(before + 1))
                # Close the event stream before the servers stop, so they stop at once.
                page.close()
