"""The Analytics page in a real browser against a real server.

Three months of usage for a small organization (Europe/Berlin) are recorded
through the metering service, then the page is opened, the period and the
chart's stacking are changed, and the chart and tables must follow.
"""

from __future__ import annotations

import asyncio
import random
import re
import secrets
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from tests.e2e.chat_site import submit_sign_in
from tests.web_admin.live_server import LiveServer, running
from tokendesk.accounts.auth import build_actor
from tokendesk.accounts.models import Role, User
from tokendesk.accounts.organizations import create_organization
from tokendesk.accounts.teams import create_team
from tokendesk.accounts.users import create_user
from tokendesk.db import Database
from tokendesk.ledger.periods import period_bounds
from tokendesk.metering.service import UsageInput, record_usage
from tokendesk.migrations.runner import upgrade
from tokendesk.token_requests import decisions

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
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "analytics"
PASSWORD = "analytics-e2e-password"
TIMEZONE = "Europe/Berlin"
SCREEN = {"width": 1440, "height": 900}
TEAMS = ["Research", "Support", "Sales", "Legal"]
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet"]
# None: usage a chat app reported through the usage API.
ENDPOINTS = ["chat", "responses", "messages", "embeddings", None]
CACHING = ("chat", "responses", "messages")

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
class Site:
    server: LiveServer

    @property
    def url(self) -> str:
        return self.server.url


async def seed(url: str) -> None:
    """Four teams of four, ninety days of usage (busier before this period), some requests.

    Usage is recorded month by month as it would have been, so balances roll
    over and hold only this period's usage.
    """
    rng = random.Random(5)
    now = datetime.now(UTC)
    start = now - timedelta(days=90)
    period_start, _ = period_bounds(now, reset_day=1, timezone=TIMEZONE)
    database = Database(url)
    try:
        async with database.transaction() as s:
            org = await create_organization(
                s, name="Globex Analytics", default_allocation=400_000, timezone=TIMEZONE
            )
            admin = await create_user(
                s,
                organization_id=org.id,
                email="admin@globex.example",
                name="Ada Admin",
                role=Role.ORG_ADMIN,
                password=PASSWORD,
                now=start,
            )
            people = []
            for team_name in TEAMS:
                team = await create_team(s, organization_id=org.id, name=team_name)
                for n in range(4):
                    people.append(
                        await create_user(
                            s,
                            organization_id=org.id,
                            email=f"{team_name.lower()}{n}@globex.example",
                            name=f"{team_name} Person {n + 1}",
                            team_id=team.id,
                            # One heavy user on a small allowance: the forecast flags them.
                            allocation_override=25_000 if (team_name, n) == ("Sales", 0) else None,
                            password=PASSWORD,
                            now=start,
                        )
                    )
            # The services stamp creation with the real clock; these people joined in time.
            await s.execute(update(User).values(created_at=start))
        months: dict[datetime, list[UsageInput]] = defaultdict(list)
        for index, person in enumerate(people):
            weight = 1 + index % 5
            for n in range(40 * weight):
                when = now - timedelta(minutes=rng.randrange(89 * 24 * 60))
                # Earlier months were busier, so the periods look different.
                size = rng.randrange(200, 2_000) * (3 if when < period_start else 1)
                month, _ = period_bounds(when, reset_day=1, timezone=TIMEZONE)
                endpoint = ENDPOINTS[(index + n) % len(ENDPOINTS)]
                prompt = size if endpoint == "embeddings" else size * 3 // 4
                months[month].append(
                    UsageInput(
                        event_id=f"e2e-{index}-{n}",
                        user_id=person.id,
                        model=MODELS[(index + n) % (1 + index % 3)],
                        prompt_tokens=prompt,
                        completion_tokens=size - prompt,
                        # Every other conversational call reads a third of its prompt from
                        # the cache; calls on the Responses API reason for half their output.
                        cached_tokens=prompt // 3 if endpoint in CACHING and n % 2 else 0,
                        reasoning_tokens=(size - prompt) // 2 if endpoint == "responses" else 0,
                        occurred_at=when,
                        endpoint=endpoint,
                    )
                )
        for month in sorted(months):
            events = months[month]
            latest = max(event.occurred_at for event in events if event.occurred_at)
            async with database.transaction() as s:
                await record_usage(s, organization_id=org.id, events=events, now=latest)
        async with database.transaction() as s:
            decider = await build_actor(s, admin)
            for person in people[:6]:
                asker = await build_actor(s, person)
                asked = await decisions.submit(
                    s, actor=asker, amount=50_000, now=now - timedelta(hours=30)
                )
                if person.id % 3:
                    await decisions.approve(
                        s, actor=decider, request_id=asked.id, now=now - timedelta(hours=27)
                    )
                else:
                    await decisions.reject(
                        s, actor=decider, request_id=asked.id, now=now - timedelta(hours=29)
                    )
    finally:
        await database.dispose()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("analytics-e2e")
    url = f"sqlite+aiosqlite:///{folder / 'tokendesk.db'}"
    # Playwright's sync API keeps an event loop in this thread; asyncio gets its own.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(upgrade, url).result()
        pool.submit(asyncio.run, seed(url)).result()
    with running(url, log_path=folder / "server.log", secret=secrets.token_urlsafe(32)) as server:
        yield Site(server)


@pytest.fixture
def page(site: Site) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=SCREEN)
        tab = context.new_page()
        tab.set_default_timeout(10_000)
        errors: list[str] = []
        tab.on("pageerror", lambda error: errors.append(str(error)))
        yield tab
        context.close()
        browser.close()
        assert errors == [], f"JavaScript errors on the page: {errors}"


def sign_in(page: Any, site: Site, path: str) -> None:
    submit_sign_in(page, site.url, "admin@globex.example", PASSWORD, next_path=path)
    page.wait_for_url(re.compile(re.escape(f"{site.url}{path}")))


def chart(page: Any) -> dict[str, str]:
    canvas = page.locator("#usage-chart")
    expect(canvas).to_have_attribute("data-drawn", "1")
    return {key: canvas.get_attribute(f"data-{key}") or "" for key in ("total", "series", "days")}


def shoot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True, animations="disabled")


class TestAnalyticsPage:
    def test_changing_the_period_redraws_the_chart_and_the_tables(
        self, site: Site, page: Any
    ) -> None:
        sign_in(page, site, "/admin/analytics")
        current = chart(page)
        tokens = page.locator("#figure-tokens").inner_text()
        assert int(current["total"]) > 0
        shoot(page, "current-period")

        page.get_by_label("Period", exact=True).select_option("90d")

        expect(page.locator("#usage-chart")).to_have_attribute("data-days", "90")
        wider = chart(page)
        assert int(wider["total"]) > int(current["total"])
        expect(page.locator("#figure-tokens")).not_to_have_text(tokens)
        assert "period=90d" in page.url
        assert wider["series"] == str(len(TEAMS))
        shoot(page, "last-90-days")

    def test_stacking_by_model_and_a_custom_range(self, site: Site, page: Any) -> None:
        sign_in(page, site, "/admin/analytics")
        chart(page)

        page.locator("label", has_text="Model").filter(has=page.locator("input")).click()
        expect(page.locator("#usage-chart")).to_have_attribute("data-series", str(len(MODELS)))

        page.get_by_label("Period", exact=True).select_option("custom")
        expect(page.get_by_label("From", exact=True)).to_be_visible()
        today = datetime.now(UTC).date()
        page.get_by_label("From", exact=True).fill((today - timedelta(days=13)).isoformat())
        page.get_by_label("To", exact=True).fill(today.isoformat())

        expect(page.locator("#usage-chart")).to_have_attribute("data-days", "14")
        expect(page.locator(".range-line")).to_contain_text("Custom range")
        expect(page.locator(".range-line")).to_contain_text("(14 days)")
        expect(page.locator("#by-model-table tbody tr")).to_have_count(len(MODELS))
        shoot(page, "custom-range-by-model")

    def test_a_table_exports_as_csv(self, site: Site, page: Any) -> None:
        sign_in(page, site, "/admin/analytics")

        with page.expect_download() as download:
            page.locator("#top-users-title").locator("xpath=../..").get_by_role(
                "link", name=re.compile("^CSV")
            ).click()

        path = download.value.path()
        lines = Path(path).read_text().splitlines()
        assert lines[0].startswith("user_id,name,email,team_name,tokens")
        assert len(lines) > 1

    def test_usage_splits_by_endpoint_and_filters_by_one(self, site: Site, page: Any) -> None:
        sign_in(page, site, "/admin/analytics?period=90d")
        chart(page)
        rows = page.locator("#by-endpoint-table tbody tr")
        expect(rows).to_have_count(len(ENDPOINTS))
        expect(page.locator("#by-endpoint-table tfoot")).to_contain_text("All")

        page.locator("label", has_text="Endpoint").filter(has=page.locator("input")).click()
        expect(page.locator("#usage-chart")).to_have_attribute("data-series", str(len(ENDPOINTS)))
        assert "stack=endpoint" in page.url
        shoot(page, "by-endpoint")

        page.locator("#analytics-endpoint").select_option("responses")
        expect(page.locator(".range-line")).to_contain_text("endpoint Responses")
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("Responses")
        # Reasoning was half the output of every call on the Responses API.
        cells = rows.first.locator("td")
        completion = int(cells.nth(5).inner_text().replace(",", ""))
        reasoning = int(cells.nth(6).inner_text().replace(",", ""))
        assert 0 < reasoning <= completion // 2 + 1
        expect(page.locator("#usage-chart")).to_have_attribute("data-series", "1")
        shoot(page, "one-endpoint")
