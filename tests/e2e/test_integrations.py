"""The admin center's Integrations page in a real browser: an org admin connects Open
WebUI, a call with its key and Open WebUI's headers provisions the person it names,
the page shows the key in use, and a revoked key is refused."""

from __future__ import annotations

import time

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.e2e.chat_site import PASSWORD, ChatSite, needs_chromium, shoot, submit_sign_in
from tokendesk.gateway.model_config import DEMO_MODEL

pytestmark = [pytest.mark.e2e, needs_chromium]

# Last use is stamped when the call's hold settles, just after the reply.
LAST_USED_WITHIN_S = 10.0


def open_webui_call(site: ChatSite, key: str, *, user_id: str, email: str) -> httpx.Response:
    """What Open WebUI sends with ENABLE_FORWARD_USER_INFO_HEADERS=true."""
    return httpx.post(
        f"{site.url}/v1/chat/completions",
        headers={
            "Authorization": f"Bearer {key}",
            "X-OpenWebUI-User-Id": user_id,
            "X-OpenWebUI-User-Email": email,
            "X-OpenWebUI-User-Name": "Nia%20Newcomer",
            "X-OpenWebUI-User-Role": "user",
        },
        json={"model": DEMO_MODEL, "messages": [{"role": "user", "content": "Hello"}]},
        timeout=10,
    )


def test_an_admin_connects_open_webui_and_revokes_it(page: Page, site: ChatSite) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=site.url)
    submit_sign_in(page, site.url, "admin@e2e.example", PASSWORD, next_path="/admin/integrations")
    page.wait_for_url(f"{site.url}/admin/integrations")
    nav = page.get_by_role("navigation", name="Admin center")
    expect(nav.get_by_role("link", name="Integrations")).to_have_attribute("aria-current", "page")

    page.get_by_label("Name", exact=True).fill("Open WebUI")
    page.get_by_label("Chat app").select_option("open-webui")
    page.get_by_role("button", name="Create integration").click()
    key_box = page.locator("#new-integration-key")
    expect(key_box).to_be_visible()
    key = key_box.input_value()
    assert key.startswith("tdi_")
    created = page.locator("#new-integration")
    expect(created.locator("dd").first).to_have_text(f"{site.url}/v1")
    expect(created).to_contain_text("ENABLE_FORWARD_USER_INFO_HEADERS=true")
    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#copy-integration-status")).to_have_text("Copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == key
    row = page.locator("tr", has_text="Open WebUI")
    expect(row.locator(".last-used")).to_have_text("never")
    shoot(page, "integrations-created")

    answer = open_webui_call(site, key, user_id="owui-7f3a", email="nia@e2e.example")
    assert answer.status_code == 200, answer.text
    with site.admin() as admin:
        (nia,) = admin.get("/api/v1/users", params={"q": "nia@e2e.example"}).json()["items"]
    assert (nia["name"], nia["role"]) == ("Nia Newcomer", "member")

    deadline = time.monotonic() + LAST_USED_WITHIN_S
    while True:
        page.reload()
        if page.locator("tr", has_text="Open WebUI").locator(".last-used").inner_text() != "never":
            break
        assert time.monotonic() < deadline, "the page never showed the key's last use"
        time.sleep(0.25)
    row = page.locator("tr", has_text="Open WebUI")
    expect(row.locator(".last-used")).to_have_text("just now")
    expect(row).to_contain_text("active")
    shoot(page, "integrations-used")

    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke Open WebUI").click()
    expect(page.locator("tr", has_text="Open WebUI")).to_contain_text("revoked")
    refused = open_webui_call(site, key, user_id="owui-7f3a", email="nia@e2e.example")
    assert refused.status_code == 401, refused.text
    shoot(page, "integrations-revoked")

    page.get_by_role("link", name="Settings").click()
    domains = page.get_by_label("Allowed email domains")
    expect(page.get_by_label("Provision them on first use")).to_be_checked()
    domains.scroll_into_view_if_needed()
    shoot(page, "settings-provisioning")
