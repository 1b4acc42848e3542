"""Admin center with a big queue: render the Token Requests page, then bulk-approve it all.

With N pending requests (default 10,000, spread over three teams):
1. server time to render the Token Requests page and its live-refresh fragment
   (in process, no network; target ≤200 ms for the first page);
2. bulk-approving every one of them through the admin UI's own endpoints over
   HTTP against a uvicorn server: the "select all matching" confirmation, then
   the bulk POST (target ≤2 s end to end);
3. the same in a real browser (Chromium, when /usr/bin/chromium exists): tick the
   page, "Select all N matching", Approve, confirm, until the summary shows.
Afterwards ``doctor`` must find every balance equal to its ledger. Run:
    .venv/bin/python benchmarks/bench_admin_queue.py [--size 10000] [--renders 30]
Set TOKENDESK_BENCH_PG_URL (its public schema is wiped) to add PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Every process of the benchmark (this one and the server) signs cookies with one key.
os.environ.setdefault("TOKENDESK_SECRET_KEY", secrets.token_urlsafe(32))
os.environ.setdefault("TOKENDESK_DEMO", "1")

from benchmarks.common import (  # noqa: E402
    analyze,
    free_port,
    machine,
    process,
    reset_postgres,
    sqlite_url,
    tokendesk_server,
    wait_ready,
)

PASSWORD = "bench-password"
CHROMIUM = Path("/usr/bin/chromium")
IDS_FIELD = re.compile(r'name="ids" value="([0-9,]*)"')


@dataclass(frozen=True)
class Loaded:
    url: str
    admin_id: int
    admin_email: str
    size: int


async def load(url: str, size: int) -> Loaded:
    """An organization, an org admin who signs in, and ``size`` members with one pending
    request each: users, balances and allocation ledger entries consistent with each other."""
    from benchmarks.pending import add_pending_members
    from tokendesk.accounts.models import Role
    from tokendesk.accounts.organizations import create_organization
    from tokendesk.accounts.teams import create_team
    from tokendesk.accounts.users import create_user
    from tokendesk.db import Database, utcnow
    from tokendesk.ledger.periods import period_bounds
    from tokendesk.migrations.runner import upgrade_async

    await upgrade_async(url)
    database = Database(url)
    now = utcnow()
    async with database.transaction() as s:
        org = await create_organization(
            s, name="Queue", default_allocation=100_000, max_request=1_000_000
        )
        teams = [
            (await create_team(s, organization_id=org.id, name=name)).id
            for name in ("Research", "Support", "Sales")
        ]
        admin = await create_user(
            s,
            organization_id=org.id,
            email="admin@queue.example",
            name="Queue Admin",
            role=Role.ORG_ADMIN,
            password=PASSWORD,
        )
        start, end = period_bounds(now, reset_day=org.reset_day, timezone=org.timezone)
        org_id, admin_id, first_id = org.id, admin.id, admin.id + 1

    await add_pending_members(
        database,
        organization_id=org_id,
        first_user_id=first_id,
        count=size,
        period=(start, end),
        now=now,
        email="member{}@queue.example",
        team_ids=teams,
        reason="end-of-quarter reports need longer summaries",
    )
    await database.dispose()
    await analyze(url)
    return Loaded(url=url, admin_id=admin_id, admin_email="admin@queue.example", size=size)


async def session_cookie(url: str, user_id: int) -> tuple[str, str]:
    """A signed-in browser session for the user: its cookie and CSRF token."""
    from tokendesk.accounts.auth import csrf_token_for, open_login_session, session_serializer
    from tokendesk.accounts.models import User
    from tokendesk.db import Database

    database = Database(url)
    async with database.transaction() as s:
        user = await s.get(User, user_id)
        assert user is not None
        cookie = await open_login_session(s, user=user)
    await database.dispose()
    return cookie, csrf_token_for(session_serializer().loads(cookie)["sid"])


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[max(0, round(len(ordered) * 0.95) - 1)]
    return (
        f"p50 {statistics.median(ordered) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
        f"max {ordered[-1] * 1000:.0f} ms"
    )


async def render_times(loaded: Loaded, renders: int) -> dict[str, list[float]]:
    """Server time: the app in process over ASGI, so no socket or client is measured."""
    from tokendesk.accounts.auth import SESSION_COOKIE
    from tokendesk.app import create_app
    from tokendesk.config import Settings
    from tokendesk.db import Database
    from tokendesk.events.bus import InProcessBus

    cookie, _ = await session_cookie(loaded.url, loaded.admin_id)
    database = Database(loaded.url, bus=InProcessBus())
    app = create_app(
        Settings(database_url=loaded.url, demo=True, scheduler_enabled=False),
        database=database,
    )
    paths = {
        "page": "/admin/requests",
        "fragment": "/admin/requests/table?status=pending",
        "last page": f"/admin/requests?page={-(-loaded.size // 50)}",
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=transport, base_url="http://bench", cookies={SESSION_COOKIE: cookie}
        ) as http,
    ):
        for name, path in paths.items():
            for attempt in range(renders + 3):
                started = time.perf_counter()
                response = await http.get(path, headers={"HX-Request": "true"})
                elapsed = time.perf_counter() - started
                assert response.status_code == 200, response.text[:300]
                if attempt >= 3:  # the first few warm caches and connections
                    times[name].append(elapsed)
        page = (await http.get(paths["page"])).text
        assert f">{loaded.size:,}<" in page, "the pending tab should count every request"
    await database.dispose()
    return times


async def check_ledger(url: str) -> None:
    from tokendesk.db import Database
    from tokendesk.ledger.doctor import check_balances

    database = Database(url)
    async with database.transaction(write=False) as s:
        mismatches = await check_balances(s)
    await database.dispose()
    assert not mismatches, mismatches[:3]


def bulk_over_http(base: str, cookie: str, csrf: str, size: int) -> tuple[float, float]:
    """The UI's two calls: the 'all matching' confirmation, then the bulk decision."""
    from tokendesk.accounts.auth import SESSION_COOKIE

    with httpx.Client(base_url=base, cookies={SESSION_COOKIE: cookie}, timeout=120) as http:
        started = time.perf_counter()
        confirm = http.get(
            "/admin/requests/bulk",
            params={"action": "approve", "matching": "1"},
            headers={"HX-Request": "true"},
        )
        confirmed = time.perf_counter()
        assert confirm.status_code == 200, confirm.text[:300]
        match = IDS_FIELD.search(confirm.text)
        assert match and match.group(1).count(",") == size - 1, "every request selected"
        decided = http.post(
            "/admin/requests/bulk",
            data={"action": "approve", "ids": match.group(1), "note": "quarter end"},
            headers={"HX-Request": "true", "X-CSRF-Token": csrf},
        )
        finished = time.perf_counter()
    assert f"Approved {size:,} requests" in decided.text, decided.text[:500]
    return confirmed - started, finished - confirmed


def bulk_in_browser(base: str, email: str, size: int) -> tuple[float, float]:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(60_000)
        page.goto(f"{base}/login?next=/admin/requests")
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
        page.get_by_label("Select every pending request on this page").check()
        page.locator("#select-matching").click()
        started = time.perf_counter()
        page.get_by_role("button", name="Approve selected").click()
        dialog = page.get_by_role("dialog")
        expect(dialog.get_by_role("heading")).to_have_text(f"Approve {size:,} requests?")
        confirmed = time.perf_counter()
        dialog.get_by_role("button", name=f"Approve {size:,}").click()
        expect(dialog.get_by_role("heading")).to_have_text(f"Approved {size:,} requests")
        finished = time.perf_counter()
        browser.close()
    return confirmed - started, finished - confirmed


@contextlib.contextmanager
def server(url: str) -> Iterator[str]:
    port = free_port()
    env = {
        "TOKENDESK_DATABASE_URL": url,
        "TOKENDESK_SCHEDULER_ENABLED": "0",
    }
    # Open event streams would otherwise hold the shutdown until they end.
    args = [*tokendesk_server(port, env), "--timeout-graceful-shutdown", "3"]
    with process(args, env):
        base = f"http://127.0.0.1:{port}"
        wait_ready(f"{base}/healthz")
        yield base


def fresh(url: str | None) -> str:
    if url:
        asyncio.run(reset_postgres(url))
        return url
    return sqlite_url()


def bench(label: str, pg_url: str | None, size: int, renders: int, browser: bool) -> None:
    loaded = asyncio.run(load(fresh(pg_url), size))
    times = asyncio.run(render_times(loaded, renders))
    for name, samples in times.items():
        print(f"| {label} | render {name} ({size:,} pending) | {summary(samples)} |", flush=True)

    cookie, csrf = asyncio.run(session_cookie(loaded.url, loaded.admin_id))
    with server(loaded.url) as base:
        confirm, decide = bulk_over_http(base, cookie, csrf, size)
    asyncio.run(check_ledger(loaded.url))
    print(
        f"| {label} | bulk approve {size:,} over HTTP | confirmation {confirm * 1000:.0f} ms "
        f"+ decision {decide * 1000:.0f} ms = **{(confirm + decide):.2f} s** end to end |",
        flush=True,
    )

    if browser and CHROMIUM.exists():
        loaded = asyncio.run(load(fresh(pg_url), size))
        with server(loaded.url) as base:
            confirm, decide = bulk_in_browser(base, loaded.admin_email, size)
        asyncio.run(check_ledger(loaded.url))
        print(
            f"| {label} | bulk approve {size:,} in Chromium | dialog {confirm * 1000:.0f} ms "
            f"+ confirm to summary {decide * 1000:.0f} ms = **{(confirm + decide):.2f} s** |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--renders", type=int, default=30)
    parser.add_argument("--no-browser", action="store_true", help="skip the Chromium run")
    args = parser.parse_args()
    backends: list[tuple[str, str | None]] = [("SQLite", None)]
    if os.environ.get("TOKENDESK_BENCH_PG_URL"):
        backends.append(("PostgreSQL", os.environ["TOKENDESK_BENCH_PG_URL"]))
    print(f"Machine: {machine()}\n")
    print("| backend | what | time |")
    print("|---|---|---|")
    for label, pg in backends:
        bench(label, pg, args.size, args.renders, browser=not args.no_browser)


if __name__ == "__main__":
    main()
