"""The chat app in a real browser against a real server.

One server process (uvicorn, SQLite, demo model) serves the whole module; each
test signs in as its own member so the scenarios do not share balances.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tokendesk.accounts import service as accounts
from tokendesk.accounts.models import Role
from tokendesk.db import Database
from tokendesk.migrations.runner import upgrade

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
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
PASSWORD = "e2e-password-123"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 812}

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


@dataclass(frozen=True)
class LiveServer:
    url: str
    admin_key: str
    database_file: Path

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.admin_key}"}, timeout=10
        )


# Each scenario's member: (email, allocation override). An override of 0 is an empty balance.
MEMBERS = {
    "chatter": ("chatter@e2e.example", None),
    "approved": ("approved@e2e.example", None),
    "rejected": ("rejected@e2e.example", None),
    "canceller": ("canceller@e2e.example", None),
    "empty": ("empty@e2e.example", 0),
    # Some tokens, but fewer than any reply needs: the gateway refuses the call.
    "tiny": ("tiny@e2e.example", 20),
    "keyboard": ("keyboard@e2e.example", None),
    "resetter": ("resetter@e2e.example", None),
}


async def _seed(url: str) -> str:
    database = Database(url)
    try:
        async with database.transaction() as s:
            org = await accounts.create_organization(
                s, name="E2E Org", default_allocation=50_000, max_request=500_000
            )
            admin = await accounts.create_user(
                s,
                organization_id=org.id,
                email="admin@e2e.example",
                name="Ada Admin",
                role=Role.ORG_ADMIN,
                password=PASSWORD,
            )
            _, admin_key = await accounts.issue_api_key(s, user=admin, name="e2e")
            for handle, (email, override) in MEMBERS.items():
                await accounts.create_user(
                    s,
                    organization_id=org.id,
                    email=email,
                    name=handle.capitalize(),
                    allocation_override=override,
                    password=PASSWORD,
                )
    finally:
        await database.dispose()
    return admin_key


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("e2e")
    url = f"sqlite+aiosqlite:///{folder / 'tokendesk.db'}"
    # Playwright's sync API keeps an event loop running in this thread; migrate and
    # seed in a thread of their own so asyncio.run() gets a clean one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(upgrade, url).result()
        admin_key = pool.submit(asyncio.run, _seed(url)).result()
    port = _free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("TOKENDESK_MODELS", "TOKENDESK_MODELS_FILE")
    }
    env.update(
        TOKENDESK_DEMO="1",
        TOKENDESK_DATABASE_URL=url,
        TOKENDESK_SECRET_KEY=secrets.token_urlsafe(32),
    )
    log = (folder / "server.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "tokendesk.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited early:\n{(folder / 'server.log').read_text()}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not healthy in 30 s:\n{(folder / 'server.log').read_text()}")
            time.sleep(0.1)
        yield LiveServer(url=base, admin_key=admin_key, database_file=folder / "tokendesk.db")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=DESKTOP)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def sign_in(page: Any, server: LiveServer, handle: str) -> None:
    page.goto(f"{server.url}/login")
    page.get_by_label("Email").fill(MEMBERS[handle][0])
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{server.url}/")
    # The event stream is connected once its snapshot has arrived.
    expect(page.locator("html")).to_have_attribute("data-events", "live")


def remaining(page: Any) -> int:
    return int(re.sub(r"\D", "", page.locator("#ind-remaining").inner_text()))


def shoot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), animations="disabled")


def request_tokens(page: Any, amount: str, reason: str) -> None:
    page.get_by_role("button", name="Request more tokens").first.click()
    dialog = page.get_by_role("dialog", name="Request more tokens")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name=f"{amount} tokens", exact=True).click()
    expect(dialog.get_by_label("Amount (tokens)")).to_have_value(amount.replace(",", ""))
    dialog.get_by_label("Reason").fill(reason)
    dialog.get_by_role("button", name="Send request").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#pending-text")).to_have_text(f"Request pending: {amount} tokens")


def pending_id(server: LiveServer, email: str) -> int:
    with server.admin() as api:
        response = api.get("/api/v1/token-requests", params={"status": "pending"})
        response.raise_for_status()
    ids = [r["id"] for r in response.json()["items"] if r["user"]["email"] == email]
    assert len(ids) == 1, response.json()
    return int(ids[0])


class TestChatting:
    def test_demo_reply_streams_in_and_the_indicator_drops(
        self, page: Any, live_server: LiveServer
    ) -> None:
        sign_in(page, live_server, "chatter")
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

    def test_deleting_a_conversation_asks_first(self, page: Any, live_server: LiveServer) -> None:
        sign_in(page, live_server, "chatter")
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
        expect(page).to_have_url(f"{live_server.url}/chat")
        expect(page.locator("#conversation-list a", has_text=title)).to_have_count(0)


class TestTokenRequests:
    def test_approval_raises_the_indicator_live_and_says_so(
        self, page: Any, live_server: LiveServer
    ) -> None:
        sign_in(page, live_server, "approved")
        before = remaining(page)
        request_tokens(page, "50,000", "Quarterly report drafting")
        shoot(page, "request-pending-desktop-1280x800")
        page.evaluate("window.__samePage = true")

        request_id = pending_id(live_server, MEMBERS["approved"][0])
        with live_server.admin() as api:
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

    def test_rejection_shows_the_note_in_a_toast(self, page: Any, live_server: LiveServer) -> None:
        sign_in(page, live_server, "rejected")
        before = remaining(page)
        request_tokens(page, "10,000", "Hackathon")
        request_id = pending_id(live_server, MEMBERS["rejected"][0])
        with live_server.admin() as api:
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
        self, page: Any, live_server: LiveServer
    ) -> None:
        sign_in(page, live_server, "canceller")
        request_tokens(page, "100,000", "")
        page.get_by_role("button", name="Cancel pending request").click()
        expect(page.locator("#pending")).to_be_hidden()
        expect(page.locator("#request-open")).to_be_visible()
        with live_server.admin() as api:
            response = api.get("/api/v1/token-requests", params={"status": "cancelled"})
        emails = [r["user"]["email"] for r in response.json()["items"]]
        assert MEMBERS["canceller"][0] in emails

    def test_amount_over_the_limit_is_refused_next_to_the_field(
        self, page: Any, live_server: LiveServer
    ) -> None:
        sign_in(page, live_server, "canceller")
        page.get_by_role("button", name="Request more tokens").first.click()
        dialog = page.get_by_role("dialog", name="Request more tokens")
        dialog.get_by_label("Amount (tokens)").fill("600000")
        dialog.get_by_role("button", name="Send request").click()
        error = dialog.locator("#amount-error")
        expect(error).to_have_text("You can ask for at most 500,000 tokens at a time.")
        expect(dialog.get_by_label("Amount (tokens)")).to_have_attribute("aria-invalid", "true")
        expect(dialog).to_be_visible()


def user_id(server: LiveServer, email: str) -> int:
    with server.admin() as api:
        response = api.get("/api/v1/users", params={"q": email})
        response.raise_for_status()
    (found,) = [u["id"] for u in response.json()["items"] if u["email"] == email]
    return int(found)


class TestMonthlyReset:
    def test_reset_refills_the_indicator_without_reload(
        self, page: Any, live_server: LiveServer
    ) -> None:
        sign_in(page, live_server, "resetter")
        member = user_id(live_server, MEMBERS["resetter"][0])
        with live_server.admin() as api:
            response = api.post(
                f"/api/v1/users/{member}/adjustments", json={"amount": 5_000, "note": "bonus"}
            )
            assert response.status_code in (200, 201), response.text
        expect(page.locator("#ind-remaining")).to_have_text("55,000", timeout=2000)
        expect(page.locator("#ind-extra")).to_have_text("· incl. +5,000 extra")
        page.evaluate("window.__samePage = true")

        # Let the period end now, as the calendar would, then have anything read the balance.
        with sqlite3.connect(live_server.database_file) as db:
            past = (datetime.now(UTC) - timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S.%f")
            db.execute("UPDATE balances SET period_end = ? WHERE user_id = ?", (past, member))
        with live_server.admin() as api:
            assert api.get(f"/api/v1/users/{member}").status_code == 200

        expect(page.locator("#ind-remaining")).to_have_text("50,000", timeout=2000)
        expect(page.locator("#ind-total")).to_have_text("50,000")
        expect(page.locator("#ind-extra")).to_be_hidden()
        assert page.evaluate("window.__samePage") is True


class TestKeyboard:
    def test_request_and_cancel_without_a_mouse(self, page: Any, live_server: LiveServer) -> None:
        sign_in(page, live_server, "keyboard")
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


class TestRefusedForQuota:
    def test_gateway_refusal_explains_and_offers_a_request(
        self, page: Any, live_server: LiveServer
    ) -> None:
        sign_in(page, live_server, "tiny")
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
        self, page: Any, live_server: LiveServer
    ) -> None:
        sign_in(page, live_server, "empty")
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


class TestApiKeys:
    def test_create_copy_and_revoke_a_personal_key(
        self, page: Any, live_server: LiveServer
    ) -> None:
        sign_in(page, live_server, "chatter")
        page.locator(".usermenu summary").click()
        page.get_by_role("link", name="API keys").click()
        expect(page).to_have_url(f"{live_server.url}/settings")

        page.get_by_label("Key name").fill("laptop")
        page.get_by_role("button", name="Create key").click()
        shown = page.get_by_label("New API key")
        expect(shown).to_have_value(re.compile(r"^td_"))
        key = shown.input_value()
        page.get_by_role("button", name="Copy").click()
        expect(page.locator("#copy-status")).to_have_text("Copied to the clipboard.")
        with httpx.Client(base_url=live_server.url, timeout=10) as api:
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
