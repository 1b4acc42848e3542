"""The Settings page's notifications in a real browser: an org admin adds a Slack
webhook (the secret shown once), sends it a test, and sees the failed delivery."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.chat_site import PASSWORD, ChatSite, needs_chromium, shoot, submit_sign_in

pytestmark = [pytest.mark.e2e, needs_chromium]


def test_an_admin_adds_a_webhook_and_tests_it(page: Page, site: ChatSite) -> None:
    submit_sign_in(page, site.url, "admin@e2e.example", PASSWORD, next_path="/admin/settings")
    page.wait_for_url(f"{site.url}/admin/settings")
    section = page.locator("#notifications")
    expect(section).to_contain_text("Notifications")
    section.get_by_label("Name", exact=True).fill("#token-approvals")
    section.get_by_label("Format").select_option("slack")
    # Nothing listens there: the test's delivery fails and is retried.
    section.get_by_label("Address").fill("http://127.0.0.1:1/services/T0/B0/x")
    section.get_by_role("button", name="Add webhook").click()
    secret = page.locator("#new-webhook-secret")
    expect(secret).to_be_visible()
    assert secret.input_value().startswith("whsec_")
    row = page.locator("#webhooks tr", has_text="#token-approvals")
    expect(row).to_contain_text("Slack")
    shoot(page, "notifications-webhook-added")
    row.get_by_role("button", name="Send a test").click()
    expect(page.locator("#new-webhook-secret")).to_have_count(0)
    page.reload()
    expect(page.locator("#new-webhook-secret")).to_have_count(0)
    # The server's worker tries at once; the failure shows in the delivery view.
    for _ in range(40):
        page.goto(f"{site.url}/admin/settings/deliveries")
        if page.locator("#deliveries td", has_text="ClientConnectorError").count():
            break
        page.wait_for_timeout(250)
    expect(page.locator("#deliveries")).to_contain_text("ClientConnectorError")
    shoot(page, "notifications-deliveries")
