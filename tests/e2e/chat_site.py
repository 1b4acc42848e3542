"""A chat-app site for browser tests: a seeded SQLite database, a real server, Chromium.

Every scenario signs in as its own member (``MEMBERS``) so scenarios sharing one
server never share a balance.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.web_admin.live_server import running
from tokendesk.accounts.api_keys import issue_api_key
from tokendesk.accounts.models import Role
from tokendesk.accounts.organizations import create_organization
from tokendesk.accounts.users import create_user
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
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "chat"
PASSWORD = "e2e-password-123"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 812}

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="browser tests need Debian's Chromium at /usr/bin/chromium (apt-get install chromium)",
)


@dataclass(frozen=True)
class ChatSite:
    url: str
    admin_key: str
    database_file: Path
    # The server's secret: tests sign what it signs (a member's request link, say).
    secret: str

    def admin(self) -> httpx.Client:
        """An HTTP client acting as the organization's admin (decides requests)."""
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
    "rescheduled": ("rescheduled@e2e.example", None),
    "debtor": ("debtor@e2e.example", None),
    "guarded": ("guarded@e2e.example", None),
    "passworder": ("passworder@e2e.example", None),
    # Chats through another chat app and asks for more through a personal link.
    "asker": ("asker@e2e.example", 0),
}


async def _seed(url: str) -> str:
    database = Database(url)
    try:
        async with database.transaction() as s:
            org = await create_organization(
                s, name="E2E Org", default_allocation=50_000, max_request=500_000
            )
            admin = await create_user(
                s,
                organization_id=org.id,
                email="admin@e2e.example",
                name="Ada Admin",
                role=Role.ORG_ADMIN,
                password=PASSWORD,
            )
            _, admin_key = await issue_api_key(s, user=admin, name="e2e")
            for handle, (email, override) in MEMBERS.items():
                await create_user(
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


@contextlib.contextmanager
def chat_site(folder: Path) -> Iterator[ChatSite]:
    """Migrate and seed a SQLite database in ``folder``, then serve it with the demo model."""
    database_file = folder / "tokendesk.db"
    url = f"sqlite+aiosqlite:///{database_file}"
    # Playwright's sync API keeps an event loop running in this thread; migrate and
    # seed in a thread of their own so asyncio.run() gets a clean one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(upgrade, url).result()
        admin_key = pool.submit(asyncio.run, _seed(url)).result()
    with pytest.MonkeyPatch.context() as env:
        # The built-in demo model is served only when no upstream model is configured.
        env.delenv("TOKENDESK_MODELS", raising=False)
        env.delenv("TOKENDESK_MODELS_FILE", raising=False)
        secret = secrets.token_urlsafe(32)
        # Reads never roll a period over: the scheduler does, and the page shows it live.
        with running(
            url, log_path=folder / "server.log", secret=secret, scheduler_seconds=0.5
        ) as server:
            yield ChatSite(
                url=server.url, admin_key=admin_key, database_file=database_file, secret=secret
            )


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def open_page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context at laptop size; any JavaScript error fails the test."""
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def submit_sign_in(
    page: Page, base_url: str, email: str, password: str, *, next_path: str | None = None
) -> None:
    """Fill in and send the real sign-in form (the page goes on to ``next_path``)."""
    query = "" if next_path is None else f"?next={quote(next_path)}"
    page.goto(f"{base_url}/login{query}")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def sign_in(page: Page, site: ChatSite, handle: str) -> None:
    submit_sign_in(page, site.url, MEMBERS[handle][0], PASSWORD)
    page.wait_for_url(f"{site.url}/")
    # The event stream is connected once its snapshot has arrived.
    expect(page.locator("html")).to_have_attribute("data-events", "live")


def remaining(page: Page) -> int:
    return int(re.sub(r"\D", "", page.locator("#ind-remaining").inner_text()))


def shoot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), animations="disabled")


def request_tokens(page: Page, amount: str, reason: str) -> None:
    page.get_by_role("button", name="Request more tokens").first.click()
    dialog = page.get_by_role("dialog", name="Request more tokens")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name=f"{amount} tokens", exact=True).click()
    expect(dialog.get_by_label("Amount (tokens)")).to_have_value(amount.replace(",", ""))
    dialog.get_by_label("Reason").fill(reason)
    dialog.get_by_role("button", name="Send request").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#pending-text")).to_have_text(f"Request pending: {amount} tokens")


def pending_id(site: ChatSite, email: str) -> int:
    with site.admin() as api:
        response = api.get("/api/v1/token-requests", params={"status": "pending"})
        response.raise_for_status()
    ids = [r["id"] for r in response.json()["items"] if r["user"]["email"] == email]
    assert len(ids) == 1, response.json()
    return int(ids[0])


def user_id(site: ChatSite, email: str) -> int:
    with site.admin() as api:
        response = api.get("/api/v1/users", params={"q": email})
        response.raise_for_status()
    (found,) = [u["id"] for u in response.json()["items"] if u["email"] == email]
    return int(found)
