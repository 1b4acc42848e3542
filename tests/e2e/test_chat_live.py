"""The chat app updating itself: token request decisions and monthly resets, no reload."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.chat_site import (
    MEMBERS,
    ChatSite,
    needs_chromium,
    pending_id,
    remaining,
    request_tokens,
    shoot,
    sign_in,
    user_id,
)

pytestmark = [pytest.mark.e2e, needs_chromium]


class TestTokenRequests:
    def test_approval_raises_the_indicator_live_and_says_so(
        self, page: Page, site: ChatSite
    ) -> None:
        sign_in(page, site, "approved")
        before = remaining(page)
        request_tokens(page, "50,000", "Quarterly report drafting")
        shoot(page, "request-pending-desktop-1280x800")
        page.evaluate("window.__samePage = true")

        request_id = pending_id(site, MEMBERS["approved"][0])
        with site.admin() as api:
            response = api.post(
                f"/api/v1/token-requests/{request_id}/approve",
                json={"amount": 40_000, "note": "Enjoy, and keep it brief"},
            )
            assert response.status_code == 200, response.text

        expect(page.locator("#ind-remaining")).to_have_text(f"{before + 40_000:,}", timeout=2000)
        toast = page.locator(".toast", has_text="Approved: +40,000 tokens")
        expect(toast).to_be_visible(timeout=2000)
        expect(toast).to_contain_text("Enjoy, and keep it brief")
        expect(page.locator("#pending")).to_be_hidden()
        expect(page.locator("#request-open")).to_be_visible()
        assert page.evaluate("window.__samePage") is True
        shoot(page, "request-approved-desktop-1280x800")

    def test_rejection_shows_the_note_in_a_toast(self, page: Page, site: ChatSite) -> None:
        sign_in(page, site, "rejected")
        before = remaining(page)
        request_tokens(page, "10,000", "Hackathon")
        request_id = pending_id(site, MEMBERS["rejected"][0])
        with site.admin() as api:
            response = api.post(
                f"/api/v1/token-requests/{request_id}/reject",
                json={"note": "Budget freeze until July"},
            )
            assert response.status_code == 200, response.text

        toast = page.locator(".toast", has_text="Request rejected")
        expect(toast).to_be_visible(timeout=2000)
        expect(toast).to_contain_text("Budget freeze until July")
        expect(page.locator("#pending")).to_be_hidden()
        assert remaining(page) == before

    def test_pending_request_can_be_cancelled_from_the_header(
        self, page: Page, site: ChatSite
    ) -> None:
        sign_in(page, site, "canceller")
        request_tokens(page, "100,000", "")
        page.get_by_role("button", name="Cancel pending request").click()
        expect(page.locator("#pending")).to_be_hidden()
        expect(page.locator("#request-open")).to_be_visible()
        with site.admin() as api:
            response = api.get("/api/v1/token-requests", params={"status": "cancelled"})
        emails = [r["user"]["email"] for r in response.json()["items"]]
        assert MEMBERS["canceller"][0] in emails

    def test_amount_over_the_limit_is_refused_next_to_the_field(
        self, page: Page, site: ChatSite
    ) -> None:
        sign_in(page, site, "canceller")
        page.get_by_role("button", name="Request more tokens").first.click()
        dialog = page.get_by_role("dialog", name="Request more tokens")
        dialog.get_by_label("Amount (tokens)").fill("600000")
        dialog.get_by_role("button", name="Send request").click()
        error = dialog.locator("#amount-error")
        expect(error).to_have_text("You can ask for at most 500,000 tokens at a time.")
        expect(dialog.get_by_label("Amount (tokens)")).to_have_attribute("aria-invalid", "true")
        expect(dialog).to_be_visible()


class TestMonthlyReset:
    def test_reset_refills_the_indicator_without_reload(self, page: Page, site: ChatSite) -> None:
        sign_in(page, site, "resetter")
        member = user_id(site, MEMBERS["resetter"][0])
        with site.admin() as api:
            response = api.post(
                f"/api/v1/users/{member}/adjustments", json={"amount": 5_000, "note": "bonus"}
            )
            assert response.status_code in (200, 201), response.text
        expect(page.locator("#ind-remaining")).to_have_text("55,000", timeout=2000)
        expect(page.locator("#ind-extra")).to_have_text("· incl. +5,000 extra")
        page.evaluate("window.__samePage = true")

        # Let the period end now, as the calendar would; the server's scheduler rolls it over.
        with sqlite3.connect(site.database_file) as db:
            past = (datetime.now(UTC) - timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S.%f")
            db.execute("UPDATE balances SET period_end = ? WHERE user_id = ?", (past, member))

        expect(page.locator("#ind-remaining")).to_have_text("50,000", timeout=2000)
        expect(page.locator("#ind-total")).to_have_text("50,000")
        expect(page.locator("#ind-extra")).to_be_hidden()
        assert page.evaluate("window.__samePage") is True


class TestCarriedDebit:
    def test_a_reset_after_overspending_shows_the_carried_debit_without_reload(
        self, page: Page, site: ChatSite
    ) -> None:
        sign_in(page, site, "debtor")
        member = user_id(site, MEMBERS["debtor"][0])
        with site.admin() as api:
            response = api.post(
                f"/api/v1/users/{member}/adjustments", json={"amount": -51_200, "note": "overrun"}
            )
            assert response.status_code in (200, 201), response.text
        expect(page.locator("#ind-remaining")).to_have_text("-1,200", timeout=2000)
        expect(page.locator("#ind-carried")).to_be_hidden()

        with sqlite3.connect(site.database_file) as db:
            past = (datetime.now(UTC) - timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S.%f")
            db.execute("UPDATE balances SET period_end = ? WHERE user_id = ?", (past, member))

        # The new period started this month: the debit comes from the month before.
        month = (datetime.now(UTC).replace(day=1) - timedelta(days=1)).strftime("%B")
        expect(page.locator("#ind-remaining")).to_have_text("48,800", timeout=2000)
        expect(page.locator("#ind-total")).to_have_text("50,000")
        expect(page.locator("#ind-carried")).to_have_text(f"· \u22121,200 carried from {month}")
        expect(page.locator("#ind-extra")).to_be_hidden()
        shoot(page, "carried-debit")


class TestResetSchedule:
    def test_a_new_reset_day_moves_the_reset_date_without_reload(
        self, page: Page, site: ChatSite
    ) -> None:
        sign_in(page, site, "rescheduled")
        page.evaluate("window.__samePage = true")
        with site.admin() as api:
            before = api.get("/api/v1/organization").json()
            day = 1 if before["reset_day"] != 1 else 15
            response = api.patch(
                "/api/v1/organization", json={"reset_day": day, "timezone": "Asia/Tokyo"}
            )
            assert response.status_code == 200, response.text
            next_reset = response.json()["next_reset_at"]
            try:
                reset = page.locator("#ind-reset")
                moved = datetime.fromisoformat(next_reset.replace("Z", "+00:00"))
                local = moved.astimezone(ZoneInfo("Asia/Tokyo"))
                # Shown in the organization's new zone (Chromium's default locale is en-US).
                expect(reset).to_have_text(f"{local:%b} {local.day}, {local.year}", timeout=2000)
                assert datetime.fromisoformat(reset.get_attribute("datetime") or "") == moved
                assert page.evaluate("window.__samePage") is True
            finally:
                api.patch(
                    "/api/v1/organization",
                    json={"reset_day": before["reset_day"], "timezone": before["timezone"]},
                )
