from __future__ import annotations

import re
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from tests.chat.support import login
from tests.factories import Person, World
from tokendesk.accounts.actor import Actor
from tokendesk.accounts.api_keys import issue_api_key
from tokendesk.accounts.auth import build_actor
from tokendesk.accounts.models import Organization, User
from tokendesk.chat import service as chat
from tokendesk.db import Database, utcnow
from tokendesk.ledger import service as ledger
from tokendesk.ledger.models import Balance, LedgerEntry
from tokendesk.ledger.periods import period_bounds
from tokendesk.metering import service as metering
from tokendesk.metering.service import UsageInput
from tokendesk.token_requests import decisions
from tokendesk.web.chat import indicator_for, request_presets


def indicator_class(html: str) -> str:
    match = re.search(r'id="indicator" class="indicator (level-\w+)"', html)
    assert match is not None
    return match.group(1)


async def spend(database: Database, person: Person, org_id: int, amount: int) -> None:
    """Chat usage, as the gateway records it."""
    async with database.transaction() as s:
        usage = UsageInput(
            event_id=f"spend-{person.id}-{amount}",
            user_id=person.id,
            model="demo",
            prompt_tokens=amount,
            completion_tokens=0,
        )
        await metering.record_usage(s, organization_id=org_id, events=[usage])


class TestChatPage:
    @pytest.mark.parametrize("path", ["/", "/chat", "/chat/1", "/settings"])
    async def test_logged_out_visitor_is_sent_to_login(
        self, client: httpx.AsyncClient, path: str
    ) -> None:
        response = await client.get(path)
        assert response.status_code == 303
        assert response.headers["location"] == f"/login?next={path}"

    @pytest.mark.parametrize("path", ["/", "/chat"])
    async def test_renders_the_indicator_with_the_members_balance(
        self, client: httpx.AsyncClient, world: World, path: str
    ) -> None:
        await login(client, world.alice)
        response = await client.get(path)
        assert response.status_code == 200
        html = response.text
        assert '<strong id="ind-remaining">50,000</strong>' in html
        assert '<span id="ind-total">50,000</span>' in html
        assert '<span id="ind-used">0</span>' in html
        assert indicator_class(html) == "level-ok"
        assert re.search(r'<time id="ind-reset" datetime="[^"]+">\d\d \w{3} \d{4}</time>', html)
        assert 'id="low-banner" class="banner banner-warn" role="status" hidden' in html

    async def test_low_balance_shows_the_banner_in_amber(
        self, client: httpx.AsyncClient, world: World, database: Database
    ) -> None:
        await spend(database, world.alice, world.org_id, 45_000)  # 10% left, org threshold 20%
        await login(client, world.alice)
        html = (await client.get("/chat")).text
        assert indicator_class(html) == "level-low"
        assert '<span id="ind-used">45,000</span>' in html
        assert 'id="low-banner" class="banner banner-warn" role="status" >' in html

    async def test_empty_balance_disables_sending_and_offers_a_request(
        self, client: httpx.AsyncClient, world: World, database: Database
    ) -> None:
        await spend(database, world.nora, world.org_id, 5_000)
        await login(client, world.nora)
        html = (await client.get("/chat")).text
        assert indicator_class(html) == "level-empty"
        assert re.search(r'<textarea id="prompt"[^>]* disabled>', html)
        assert re.search(r'<button type="submit" id="send"[^>]* disabled>', html)
        assert "You have no tokens left this period." in html
        assert 'class="alert alert-error empty-notice" role="alert" >' in html

    async def test_pending_request_is_shown_with_its_amount(
        self, client: httpx.AsyncClient, world: World, database: Database
    ) -> None:
        await login(client, world.alice)
        async with database.transaction() as s:
            actor = await _actor(s, world.alice.id)
            await decisions.submit(s, actor=actor, amount=12_345, reason="report")
        html = (await client.get("/chat")).text
        assert '<strong id="pending-amount">12,345</strong>' in html
        assert re.search(r'id="request-open"[^>]*hidden', html)

    async def test_opens_own_conversation_with_messages_escaped(
        self, client: httpx.AsyncClient, world: World, database: Database
    ) -> None:
        async with database.transaction() as s:
            actor = await _actor(s, world.alice.id)
            convo = await chat.create_conversation(s, actor=actor, model="demo")
            await chat.add_message(
                s,
                actor=actor,
                conversation_id=convo.id,
                role=chat.MessageRole.USER,
                content="<script>alert(1)</script>",
            )
        await login(client, world.alice)
        response = await client.get(f"/chat/{convo.id}")
        assert response.status_code == 200
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text
        assert "<script>alert(1)</script>" not in response.text
        assert f'<a href="/chat/{convo.id}" aria-current="page">' in response.text

    async def test_someone_elses_conversation_renders_a_fresh_chat_with_404(
        self, client: httpx.AsyncClient, world: World, database: Database
    ) -> None:
        async with database.transaction() as s:
            actor = await _actor(s, world.alice.id)
            convo = await chat.create_conversation(s, actor=actor, title="Secret plans")
        await login(client, world.bob)
        response = await client.get(f"/chat/{convo.id}")
        assert response.status_code == 404
        assert "does not exist or was deleted" in response.text
        assert "Secret plans" not in response.text

    @pytest.mark.parametrize("path", ["/chat/abc", "/chat/999999"])
    async def test_unknown_conversation_address_renders_the_page_with_404(
        self, client: httpx.AsyncClient, world: World, path: str
    ) -> None:
        await login(client, world.alice)
        response = await client.get(path)
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("text/html")
        assert "does not exist or was deleted" in response.text

    async def test_presets_stop_at_the_organizations_maximum(
        self, client: httpx.AsyncClient, world: World, database: Database
    ) -> None:
        async with database.transaction() as s:
            org = await s.get(Organization, world.org_id)
            assert org is not None
            org.max_request = 60_000
        await login(client, world.alice)
        html = (await client.get("/chat")).text
        assert re.findall(r'data-amount="(\d+)"', html) == ["10000", "50000"]
        assert 'max="60000"' in html


class TestSettingsPage:
    async def test_lists_the_members_keys_and_no_one_elses(
        self, client: httpx.AsyncClient, world: World, database: Database
    ) -> None:
        async with database.transaction() as s:
            alice = await s.get(User, world.alice.id)
            assert alice is not None
            await issue_api_key(s, user=alice, name="laptop")
        await login(client, world.alice)
        response = await client.get("/settings")
        assert response.status_code == 200
        rows = re.findall(r'<tr data-key-id="\d+">\s*<td>([^<]+)</td>', response.text)
        assert rows == ["laptop", "default"]
        assert world.alice.key not in response.text
        assert "http://test/v1" in response.text


async def end_the_period_in_debt(database: Database, person: Person, org_id: int) -> str:
    """Make the person's current period the last one, ended 1,200 tokens below zero, and
    start the new one; the month the debit comes from."""
    await spend(database, person, org_id, 6_200)  # nora has 5,000
    start, _ = period_bounds(utcnow(), reset_day=1, timezone="UTC")
    previous, _ = period_bounds(start - timedelta(days=1), reset_day=1, timezone="UTC")
    async with database.transaction() as s:
        await s.execute(
            update(Balance)
            .where(Balance.user_id == person.id)
            .values(period_start=previous, period_end=start)
        )
        await s.execute(
            update(LedgerEntry)
            .where(LedgerEntry.user_id == person.id)
            .values(period_start=previous)
        )
        await ledger.rollover_due(s, user_ids=[person.id])
    return previous.strftime("%B")


class TestCarriedDebit:
    async def test_indicator_shows_the_debit_carried_from_last_month(
        self, client: httpx.AsyncClient, world: World, database: Database
    ) -> None:
        month = await end_the_period_in_debt(database, world.nora, world.org_id)
        await login(client, world.nora)
        html = (await client.get("/chat")).text
        # The indicator writes a minus sign (U+2212), as it does for negative extras.
        text = f"\u22121,200 carried from {month}"
        assert f'<span id="ind-carried-text">{text}</span>' in html
        assert re.search(r'<span id="ind-carried" >', html)
        assert '<strong id="ind-remaining">3,800</strong>' in html
        assert '<span id="ind-total">5,000</span>' in html
        # The debit is not shown again among the extra tokens.
        assert re.search(r'<span id="ind-extra" hidden>', html)

    async def test_no_debit_no_carried_line(self, client: httpx.AsyncClient, world: World) -> None:
        await login(client, world.nora)
        html = (await client.get("/chat")).text
        assert re.search(r'<span id="ind-carried" hidden>', html)


class TestIndicatorRules:
    @pytest.mark.parametrize(
        ("remaining", "granted", "level", "percent"),
        [
            (50_000, 0, "ok", 100),
            (10_000, 0, "ok", 20),
            (9_999, 0, "low", 19),
            (2_500, 0, "critical", 5),
            (2_501, 0, "low", 5),
            (0, 0, "empty", 0),
            (-10, 0, "empty", 0),
            (60_000, 50_000, "ok", 60),
        ],
    )
    def test_level_follows_the_share_left(
        self, remaining: int, granted: int, level: str, percent: int
    ) -> None:
        balance = {"allocation": 50_000, "granted": granted, "adjusted": 0, "used": 0}
        shown = indicator_for({**balance, "remaining": remaining}, low_percent=20)
        assert (shown.level, shown.percent) == (level, percent)

    def test_a_carried_debit_counts_against_what_is_left_not_what_the_period_gives(
        self,
    ) -> None:
        balance = {"allocation": 50_000, "granted": 0, "adjusted": -1_200, "used": 0}
        shown = indicator_for({**balance, "remaining": 48_800}, low_percent=20, carried=-1_200)
        assert (shown.total, shown.extra, shown.carried, shown.percent) == (50_000, 0, -1_200, 97)

    def test_presets_never_exceed_the_maximum(self) -> None:
        assert request_presets(1_000_000) == [10_000, 50_000, 100_000, 250_000]
        assert request_presets(5_000) == [5_000]


async def _actor(session: AsyncSession, user_id: int) -> Actor:
    user = await session.get(User, user_id)
    assert user is not None
    return await build_actor(session, user)
