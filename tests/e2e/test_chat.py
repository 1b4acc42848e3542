"""The chat app in a real browser: chatting, refusals, keyboard use and API keys."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.e2e.chat_site import (
    DESKTOP,
    PHONE,
    ChatSite,
    needs_chromium,
    remaining,
    shoot,
    sign_in,
)

pytestmark = [pytest.mark.e2e, needs_chromium]


class TestChatting:
    def test_demo_reply_streams_in_and_the_indicator_drops(
        self, page: Page, site: ChatSite
    ) -> None:
        sign_in(page, site, "chatter")
        before = remaining(page)
        expect(page.locator("#model")).to_have_value("demo")
        expect(page.locator("#model option:checked")).to_contain_text("demo")

        prompt = page.get_by_label("Message", exact=True)
        prompt.fill("Plan a three-day trip to Lisbon")
        prompt.press("Shift+Enter")
        prompt.press_sequentially("with <b>museums</b> & food")
        prompt.press("Enter")

        user = page.locator(".msg-user .bubble").last
        expect(user).to_have_text("Plan a three-day trip to Lisbon\nwith <b>museums</b> & food")
        reply = page.locator(".msg-assistant .bubble").last
        expect(reply).to_contain_text("demo", timeout=10_000)
        expect(page.locator(".msg-assistant.streaming")).to_have_count(0, timeout=10_000)
        expect(page.locator("#ind-remaining")).not_to_have_text(f"{before:,}", timeout=5_000)
        assert remaining(page) < before
        assert page.locator("#ind-used").inner_text() != "0"
        # The text arrived as text: nothing in it became markup.
        assert page.locator(".msg-user b").count() == 0

        expect(page).to_have_url(re.compile(r"/chat/\d+$"))
        item = page.locator("#conversation-list a").first
        expect(item).to_have_text("Plan a three-day trip to Lisbon")
        shoot(page, "chat-desktop-1280x800")
        page.set_viewport_size(PHONE)
        shoot(page, "chat-phone-375x812")
        page.get_by_role("button", name="Show conversations").click()
        expect(page.locator("#sidebar")).to_be_visible()
        shoot(page, "chat-phone-sidebar-375x812")
        page.keyboard.press("Escape")
        page.set_viewport_size(DESKTOP)

        page.reload()
        expect(page.locator(".msg-user .bubble")).to_have_count(1)
        expect(page.locator(".msg-assistant .bubble")).to_contain_text("demo")

    def test_deleting_a_conversation_asks_first(self, page: Page, site: ChatSite) -> None:
        sign_in(page, site, "chatter")
        page.get_by_label("Message", exact=True).fill("A conversation to delete")
        page.get_by_label("Message", exact=True).press("Enter")
        expect(page.locator(".msg-assistant.streaming")).to_have_count(0, timeout=10_000)
        expect(page.locator(".msg-assistant .bubble").last).not_to_be_empty()
        title = "A conversation to delete"
        page.get_by_role("button", name=f"Delete conversation: {title}").click()
        dialog = page.get_by_role("dialog", name="Delete conversation?")
        dialog.get_by_role("button", name="Keep it").click()
        expect(page.locator("#conversation-list a", has_text=title)).to_have_count(1)
        page.get_by_role("button", name=f"Delete conversation: {title}").click()
        dialog.get_by_role("button", name="Delete", exact=True).click()
        expect(page).to_have_url(f"{site.url}/chat")
        expect(page.locator("#conversation-list a", has_text=title)).to_have_count(0)


class TestRefusedForQuota:
    def test_gateway_refusal_explains_and_offers_a_request(
        self, page: Page, site: ChatSite
    ) -> None:
        sign_in(page, site, "tiny")
        assert remaining(page) == 20
        page.get_by_label("Message", exact=True).fill("Write a long essay about tides")
        page.get_by_label("Message", exact=True).press("Enter")
        error = page.locator(".msg-error")
        expect(error).to_contain_text("Not enough tokens left for this reply (20 left)")
        expect(page.locator(".msg-assistant")).to_have_count(0)
        assert remaining(page) == 20
        shoot(page, "quota-refused-desktop-1280x800")
        error.get_by_role("button", name="Request more tokens").click()
        expect(page.get_by_role("dialog", name="Request more tokens")).to_be_visible()


class TestEmptyBalance:
    def test_sending_is_disabled_and_the_request_button_offered(
        self, page: Page, site: ChatSite
    ) -> None:
        sign_in(page, site, "empty")
        expect(page.locator("#indicator")).to_have_class(re.compile(r"\blevel-empty\b"))
        expect(page.get_by_label("Message", exact=True)).to_be_disabled()
        expect(page.locator("#send")).to_be_disabled()
        notice = page.locator("#empty-notice")
        expect(notice).to_contain_text("You have no tokens left this period.")
        shoot(page, "empty-balance-desktop-1280x800")
        page.set_viewport_size(PHONE)
        shoot(page, "empty-balance-phone-375x812")
        notice.get_by_role("button", name="Request more tokens").click()
        expect(page.get_by_role("dialog", name="Request more tokens")).to_be_visible()
        shoot(page, "request-dialog-phone-375x812")


class TestKeyboard:
    def test_request_and_cancel_without_a_mouse(self, page: Page, site: ChatSite) -> None:
        sign_in(page, site, "keyboard")
        expect(page.get_by_label("Message", exact=True)).to_be_focused()
        opener = page.locator("#request-open")
        opener.focus()
        page.keyboard.press("Enter")
        dialog = page.get_by_role("dialog", name="Request more tokens")
        amount = dialog.get_by_label("Amount (tokens)")
        expect(amount).to_be_focused()
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
        expect(opener).to_be_focused()

        page.keyboard.press("Enter")
        page.keyboard.type("12345")
        for _ in range(5):  # past the four presets to the reason
            page.keyboard.press("Tab")
        expect(dialog.get_by_label("Reason")).to_be_focused()
        page.keyboard.type("Typed, not clicked")
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")
        expect(dialog.get_by_role("button", name="Send request")).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.locator("#pending-text")).to_have_text("Request pending: 12,345 tokens")
        cancel = page.get_by_role("button", name="Cancel pending request")
        expect(cancel).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.locator("#pending")).to_be_hidden()
        expect(opener).to_be_focused()


class TestApiKeys:
    def test_create_copy_and_revoke_a_personal_key(self, page: Page, site: ChatSite) -> None:
        sign_in(page, site, "chatter")
        page.locator(".usermenu summary").click()
        page.get_by_role("link", name="API keys").click()
        expect(page).to_have_url(f"{site.url}/settings")

        page.get_by_label("Key name").fill("laptop")
        page.get_by_role("button", name="Create key").click()
        shown = page.get_by_label("New API key")
        expect(shown).to_have_value(re.compile(r"^td_"))
        key = shown.input_value()
        page.get_by_role("button", name="Copy").click()
        expect(page.locator("#copy-status")).to_have_text("Copied to the clipboard.")
        with httpx.Client(base_url=site.url, timeout=10) as api:
            models = api.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert models.status_code == 200
        row = page.locator("#keys-body tr", has_text="laptop")
        expect(row).to_contain_text("active")
        shoot(page, "settings-desktop-1280x800")
        page.set_viewport_size(PHONE)
        shoot(page, "settings-phone-375x812")
        page.set_viewport_size(DESKTOP)

        row.get_by_role("button", name="Revoke key laptop").click()
        dialog = page.get_by_role("dialog", name="Revoke this key?")
        expect(dialog).to_contain_text("laptop")
        dialog.get_by_role("button", name="Revoke key").click()
        expect(dialog).to_be_hidden()
        expect(row).to_contain_text("revoked")
        page.reload()
        expect(page.locator("#keys-body tr", has_text="laptop")).to_contain_text("revoked")
        # The key is shown once: after a reload only its prefix remains.
        assert key not in page.content()
