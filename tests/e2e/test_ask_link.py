"""The request page a personal link opens, in Chromium: no password, a request sent from
it, and the decision arriving live."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.e2e.chat_site import (
    MEMBERS,
    PHONE,
    ChatSite,
    needs_chromium,
    open_page,
    pending_id,
    remaining,
    user_id,
)
from tokendesk.config import Settings
from tokendesk.db import utcnow
from tokendesk.token_requests.links import request_link

pytestmark = [pytest.mark.e2e, needs_chromium]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ask"


def shoot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), animations="disabled", full_page=True)


def link_for(site: ChatSite, handle: str, **kwargs: object) -> str:
    settings = Settings(secret_key=site.secret, demo=True)
    uid = user_id(site, MEMBERS[handle][0])
    return site.url + request_link(settings, user_id=uid, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def phone(browser: Browser) -> Iterator[Page]:
    with open_page(browser) as tab:
        tab.set_viewport_size(PHONE)
        yield tab


class TestAskPage:
    def test_a_request_sent_from_the_link_is_approved_and_the_balance_rises_live(
        self, page: Page, site: ChatSite
    ) -> None:
        link = link_for(site, "asker")
        page.goto(link)
        expect(page.locator("html")).to_have_attribute("data-events", "live")
        expect(page.get_by_role("heading", name="Your tokens")).to_be_visible()
        assert remaining(page) == 0
        expect(page.locator("#empty-notice")).to_be_visible()
        shoot(page, "empty-desktop-1280x800")

        page.get_by_role("button", name="50,000 tokens", exact=True).click()
        expect(page.get_by_label("Amount (tokens)")).to_have_value("50000")
        page.get_by_label("Reason").fill("Finishing the quarterly report")
        page.get_by_role("button", name="Send request").click()
        expect(page.locator("#outcome")).to_contain_text("Your request was sent")
        expect(page.locator("#ask-pending")).to_contain_text("You asked for 50,000 more tokens")
        expect(page.locator("html")).to_have_attribute("data-events", "live")
        shoot(page, "pending-desktop-1280x800")
        page.evaluate("window.__samePage = true")

        request_id = pending_id(site, MEMBERS["asker"][0])
        with site.admin() as api:
            response = api.post(
                f"/api/v1/token-requests/{request_id}/approve",
                json={"amount": 40_000, "note": "Go ahead"},
            )
            assert response.status_code == 200, response.text

        expect(page.locator("#ind-remaining")).to_have_text("40,000", timeout=3000)
        expect(page.locator("#decision")).to_contain_text(
            "Approved: 40,000 tokens were added to your balance. Note: “Go ahead”"
        )
        expect(page.locator("#empty-notice")).to_be_hidden()
        expect(page.locator("#ask-pending")).to_be_hidden()
        expect(page.get_by_role("button", name="Send request")).to_be_visible()
        assert page.evaluate("window.__samePage") is True
        shoot(page, "approved-desktop-1280x800")

    def test_a_pending_request_can_be_cancelled_from_the_page(
        self, phone: Page, site: ChatSite
    ) -> None:
        phone.goto(link_for(site, "canceller"))
        expect(phone.locator("html")).to_have_attribute("data-events", "live")
        phone.get_by_label("Amount (tokens)").fill("12,000")
        phone.get_by_role("button", name="Send request").click()
        expect(phone.locator("#ask-pending")).to_contain_text("12,000")
        shoot(phone, "pending-phone-375x812")
        phone.get_by_role("button", name="Cancel this request").click()
        expect(phone.locator("#outcome")).to_have_text("Your request was cancelled.")
        expect(phone.get_by_role("button", name="Send request")).to_be_visible()

    def test_an_expired_link_says_so(self, page: Page, site: ChatSite) -> None:
        old = utcnow().replace(year=utcnow().year - 1)
        page.goto(link_for(site, "asker", now=old))
        expect(page.get_by_role("heading", name="This link has expired")).to_be_visible()
        assert not re.search(r"Asker", page.content())
        shoot(page, "expired-desktop-1280x800")
