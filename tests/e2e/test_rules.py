"""Auto-approve rules end to end: an admin writes a rule on the Settings page, a member
asks in the chat app, and the approval arrives live, recorded as the rule's."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.e2e.chat_site import (
    DESKTOP,
    MEMBERS,
    PASSWORD,
    ChatSite,
    needs_chromium,
    remaining,
    shoot,
    sign_in,
    submit_sign_in,
)

pytestmark = [pytest.mark.e2e, needs_chromium]


def admin_page(browser: Browser, site: ChatSite) -> Page:
    page = browser.new_context(viewport=DESKTOP).new_page()
    submit_sign_in(page, site.url, "admin@e2e.example", PASSWORD, next_path="/admin/settings")
    page.wait_for_url(f"{site.url}/admin/settings")
    return page


class TestAutoApproval:
    def test_a_rule_written_on_the_settings_page_approves_a_members_request_live(
        self, browser: Browser, page: Page, site: ChatSite
    ) -> None:
        admin = admin_page(browser, site)
        errors: list[str] = []
        admin.on("pageerror", lambda error: errors.append(str(error)))
        editor = admin.locator("#rule-editor")
        editor.get_by_label("Name").fill("Small top-ups")
        editor.get_by_label("Requests of at most (tokens)").fill("abc")
        # The preview names the bad limit before anything is saved.
        expect(admin.locator("#rule-preview")).to_contain_text("Requests of at most", timeout=3000)
        editor.get_by_label("Requests of at most (tokens)").fill("20,000")
        expect(admin.locator("#rule-preview")).to_contain_text("Last period", timeout=3000)
        editor.get_by_label("At most this many approvals per person per period").fill("2")
        editor.get_by_role("button", name="Add rule").click()
        row = admin.locator('[data-rule-list="org"] tr', has_text="Small top-ups")
        expect(row).to_contain_text("20,000")
        expect(row).to_contain_text("2 approvals")
        admin.locator("#rules").scroll_into_view_if_needed()
        shoot(admin, "rules-settings-desktop-1280x800")

        # Edit it: the preview follows the edited limits, then the save shows them.
        admin.get_by_role("button", name="Edit Small top-ups").click()
        expect(admin.locator("#rule-editor-title")).to_have_text("Edit rule Small top-ups")
        admin.locator("#rule-max_amount").fill("25,000")
        expect(admin.locator("#rule-preview")).to_contain_text("Last period", timeout=3000)
        admin.get_by_role("button", name="Save rule").click()
        expect(row).to_contain_text("25,000")

        sign_in(page, site, "chatter")
        before = remaining(page)
        page.evaluate("window.__samePage = true")
        page.get_by_role("button", name="Request more tokens").first.click()
        dialog = page.get_by_role("dialog", name="Request more tokens")
        dialog.get_by_role("button", name="10,000 tokens", exact=True).click()
        dialog.get_by_label("Reason").fill("A long report")
        dialog.get_by_role("button", name="Send request").click()
        expect(dialog).to_be_hidden()

        expect(page.locator("#ind-remaining")).to_have_text(f"{before + 10_000:,}", timeout=3000)
        toast = page.locator(".toast", has_text="Approved: +10,000 tokens")
        expect(toast).to_be_visible(timeout=3000)
        expect(toast).to_contain_text("auto-approved by rule Small top-ups")
        expect(toast).to_have_count(1)
        expect(page.locator("#pending")).to_be_hidden()
        expect(page.locator("#request-open")).to_be_visible()
        assert page.evaluate("window.__samePage") is True
        shoot(page, "rule-approved-desktop-1280x800")

        admin.goto(f"{site.url}/admin/requests?status=approved")
        approved = admin.locator("tr", has_text=MEMBERS["chatter"][0])
        expect(approved).to_contain_text("auto-approved by rule Small top-ups")
        admin.goto(f"{site.url}/admin/audit")
        expect(
            admin.locator("td", has_text="auto-approved by rule Small top-ups").first
        ).to_be_visible()
        admin.context.close()
        assert errors == []


class TestAutoTopUp:
    def test_turned_on_on_the_settings_page_it_tops_a_member_up_live(
        self, browser: Browser, page: Page, site: ChatSite
    ) -> None:
        admin = admin_page(browser, site)
        section = admin.locator("#top-up")
        expect(section.locator("#top-up-state")).to_have_text("off")
        section.get_by_label("Top members up automatically").check()
        section.get_by_label("When usage crosses (% of what they have)").fill("80")
        section.get_by_label("Grant (tokens)").fill("10,000")
        section.get_by_role("button", name="Save auto top-up").click()
        expect(admin.locator("#top-up-state")).to_have_text("on")
        admin.context.close()

        sign_in(page, site, "keyboard")
        before = remaining(page)
        page.evaluate("window.__samePage = true")
        # Another chat app reports usage that crosses 80% of the member's 50,000.
        with site.admin() as api:
            event = {
                "event_id": "top-up-e2e",
                "user_email": MEMBERS["keyboard"][0],
                "model": "demo",
                "prompt_tokens": 40_500,
                "completion_tokens": 0,
            }
            response = api.post("/api/v1/usage", json={"events": [event]})
            assert response.status_code in (200, 201), response.text

        expect(page.locator("#ind-remaining")).to_have_text(
            f"{before - 40_500 + 10_000:,}", timeout=3000
        )
        toast = page.locator(".toast", has_text="Approved: +10,000 tokens")
        expect(toast).to_contain_text("auto-approved by rule Auto top-up", timeout=3000)
        assert page.evaluate("window.__samePage") is True
