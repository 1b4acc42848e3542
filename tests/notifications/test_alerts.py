"""Balance alerts: thresholds crossed by a debit and the run-out forecast's warning."""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from tests.factories import Person, World
from tests.notifications.receivers import Mailbox, Receiver
from tests.notifications.support import add_webhook, outbox
from tests.token_requests.support import actor_for, counting_statements, decide, submit
from tokendesk.accounts.models import Organization
from tokendesk.db import Database, utcnow
from tokendesk.ledger.models import Balance
from tokendesk.metering.service import UsageInput, record_usage
from tokendesk.notifications import alerts, preferences
from tokendesk.notifications.models import OrgNotificationSettings, ThresholdAlert
from tokendesk.notifications.schemas import PreferencesIn
from tokendesk.notifications.worker import NotificationWorker

# Alice (team Alpha) has 50,000 tokens a period: 80% is 40,000.
ALLOWANCE = 50_000
_ids = itertools.count()


async def use(
    database: Database, person: Person, world: World, tokens: int, *, now: datetime
) -> None:
    async with database.transaction() as s:
        await record_usage(
            s,
            organization_id=world.org_id,
            events=[
                UsageInput(
                    event_id=f"e{next(_ids)}",
                    user_id=person.id,
                    model="gpt-4o",
                    prompt_tokens=tokens,
                    completion_tokens=0,
                )
            ],
            now=now,
        )


async def period_of(database: Database, person: Person) -> tuple[datetime, datetime]:
    async with database.transaction(write=False) as s:
        balance = await s.get(Balance, person.id)
        assert balance is not None
        return balance.period_start, balance.period_end


async def thresholds_sent(database: Database, person: Person) -> list[int]:
    rows = await outbox(database, user_id=person.id, kind="balance.threshold")
    return [int((row.details or {})["percent"]) for row in rows]


@pytest.fixture
async def late(database: Database, world: World) -> datetime:
    """Late in Alice's period: at any pace the forecast sees her reach the reset."""
    _, end = await period_of(database, world.alice)
    return end - timedelta(hours=1)


class TestThresholds:
    async def test_crossing_80_percent_tells_the_member_and_nobody_else(
        self,
        database: Database,
        world: World,
        worker: NotificationWorker,
        mailbox: Mailbox,
        late: datetime,
    ) -> None:
        await use(database, world.alice, world, 39_000, now=late)
        assert await outbox(database) == []
        await use(database, world.alice, world, 2_000, now=late)
        assert await thresholds_sent(database, world.alice) == [80]
        await worker.drain(now=late)
        assert mailbox.recipients() == ["alice@example.com"]
        [mail] = mailbox.mails
        assert mail["Subject"] == "You have used 80% of your tokens"
        text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert "9,000 tokens left" in text

    async def test_each_threshold_fires_once_per_period(
        self, database: Database, world: World, late: datetime
    ) -> None:
        for _ in range(3):
            await use(database, world.alice, world, 14_000, now=late)
        # 14,000, 28,000, 42,000: 80% once; more usage past it sends nothing more.
        await use(database, world.alice, world, 1_000, now=late)
        assert await thresholds_sent(database, world.alice) == [80]
        await use(database, world.alice, world, 10_000, now=late)
        assert await thresholds_sent(database, world.alice) == [80, 100]
        await use(database, world.alice, world, 10_000, now=late)
        assert await thresholds_sent(database, world.alice) == [80, 100]

    async def test_one_debit_past_two_thresholds_sends_one_email_for_the_higher(
        self, database: Database, world: World, late: datetime
    ) -> None:
        await use(database, world.alice, world, 60_000, now=late)
        assert await thresholds_sent(database, world.alice) == [100]
        async with database.transaction(write=False) as s:
            recorded = await s.scalars(select(ThresholdAlert.percent).order_by("percent"))
            assert list(recorded) == [80, 100]

    async def test_the_next_period_fires_again(
        self, database: Database, world: World, late: datetime
    ) -> None:
        await use(database, world.alice, world, 41_000, now=late)
        _, end = await period_of(database, world.alice)
        next_late = end + timedelta(days=27)
        await use(database, world.alice, world, 41_000, now=next_late)
        assert await thresholds_sent(database, world.alice) == [80, 80]

    async def test_the_organizations_own_thresholds_are_used(
        self, database: Database, world: World, late: datetime
    ) -> None:
        async with database.transaction() as s:
            s.add(
                OrgNotificationSettings(
                    organization_id=world.org_id, usage_thresholds="50", email_enabled=True
                )
            )
        await use(database, world.alice, world, 26_000, now=late)
        await use(database, world.alice, world, 20_000, now=late)
        assert await thresholds_sent(database, world.alice) == [50]

    async def test_a_member_who_turned_them_off_gets_none(
        self, database: Database, world: World, late: datetime
    ) -> None:
        actor = await actor_for(database, world.alice)
        async with database.transaction() as s:
            await preferences.update(s, actor=actor, data=PreferencesIn(balance_alerts=False))
        await use(database, world.alice, world, 45_000, now=late)
        assert await outbox(database) == []

    async def test_an_organization_with_email_off_records_nothing(
        self, database: Database, world: World, late: datetime
    ) -> None:
        async with database.transaction() as s:
            s.add(OrgNotificationSettings(organization_id=world.org_id, email_enabled=False))
        await use(database, world.alice, world, 45_000, now=late)
        assert await outbox(database) == []


class TestCheapWhenNothingCrosses:
    async def test_a_debit_that_crosses_nothing_runs_no_statement_of_its_own(
        self, database: Database, world: World, late: datetime
    ) -> None:
        with counting_statements(database) as statements:
            await use(database, world.alice, world, 1_000, now=late)
        # The balances' read carries the thresholds (a join): nothing else is asked.
        assert [s for s in statements if "notification" in s and "JOIN" not in s] == []
        with counting_statements(database) as statements:
            await use(database, world.alice, world, 40_000, now=late)
        assert any("notification_threshold_alerts" in s for s in statements)


class TestRunOutForecast:
    async def test_a_fast_pace_warns_once_before_the_reset(
        self, database: Database, world: World, worker: NotificationWorker, mailbox: Mailbox
    ) -> None:
        start, _ = await period_of(database, world.alice)
        early = start + timedelta(days=2)
        # 12,000 in two days: 6,000 a day empties the remaining 38,000 in about six days.
        await use(database, world.alice, world, 12_000, now=early)
        [row] = await outbox(database, kind="balance.runout")
        assert row.user_id == world.alice.id
        assert (row.details or {})["per_day"] == 6_000
        await use(database, world.alice, world, 6_000, now=early + timedelta(hours=1))
        assert len(await outbox(database, kind="balance.runout")) == 1
        await worker.drain(now=early + timedelta(hours=1))
        [mail] = mailbox.to("alice@example.com")
        assert mail["Subject"] == "At your pace you will run out of tokens before the reset"

    async def test_a_pace_that_reaches_the_reset_warns_nobody(
        self, database: Database, world: World, late: datetime
    ) -> None:
        await use(database, world.alice, world, 30_000, now=late)
        assert await outbox(database, kind="balance.runout") == []


class TestConcurrentDebits:
    async def test_concurrent_debits_send_a_crossing_once(
        self, database: Database, world: World, late: datetime
    ) -> None:
        await use(database, world.alice, world, 38_000, now=late)
        await asyncio.gather(
            *(use(database, world.alice, world, 1_000, now=late) for _ in range(8))
        )
        assert await thresholds_sent(database, world.alice) == [80]

    async def test_two_transactions_claiming_one_alert_get_it_once(
        self, postgres_only: None, database: Database, world: World
    ) -> None:
        start = utcnow().replace(microsecond=0)
        row = (world.org_id, alerts.USER, world.alice.id, start, 80)
        first_in = asyncio.Event()

        async def claim(wait: bool) -> set[tuple[str, int, int]]:
            async with database.transaction() as s:
                fresh = await alerts.claim_alerts(s, [row], now=start)
                first_in.set()
                if wait:
                    # Still uncommitted while the other claims: it must wait, then skip.
                    await asyncio.sleep(0.3)
                return fresh

        async def second() -> set[tuple[str, int, int]]:
            await first_in.wait()
            return await claim(False)

        won, lost = await asyncio.gather(claim(True), second())
        assert won == {(alerts.USER, world.alice.id, 80)}
        assert lost == set()


class TestPoolAlert:
    @pytest.fixture
    async def pooled(self, database: Database, world: World) -> World:
        """Acme's allocations take 355,000 of a 400,000 pool; it alerts at 90% (360,000)."""
        async with database.transaction() as s:
            org = await s.get(Organization, world.org_id)
            assert org is not None
            org.pool = 400_000
            s.add(OrgNotificationSettings(organization_id=world.org_id, pool_threshold=90))
        return world

    async def test_the_grant_that_crosses_tells_the_org_admins_once(
        self,
        database: Database,
        pooled: World,
        worker: NotificationWorker,
        mailbox: Mailbox,
        receiver: Receiver,
    ) -> None:
        world = pooled
        await add_webhook(database, world.admin, receiver, "/org")
        await add_webhook(database, world.admin, receiver, "/alpha", team_id=world.team_a)
        first = await submit(database, world.bob, amount=3_000)
        await decide(database, world.admin, first.id, "approve")
        assert await outbox(database, kind="pool.threshold") == []
        second = await submit(database, world.alice, amount=4_000)
        await decide(database, world.owner, second.id, "approve")
        third = await submit(database, world.amy, amount=1_000)
        await decide(database, world.owner, third.id, "approve")
        rows = await outbox(database, kind="pool.threshold")
        assert [(r.channel, r.user_id) for r in rows] == [
            ("email", world.admin.id),
            ("webhook", None),
        ]
        assert (rows[0].details or {})["used"] == 362_000
        await worker.drain()
        [mail] = [m for m in mailbox.mails if "pool" in m["Subject"]]
        assert mail["To"].endswith("<admin@example.com>")
        assert mail["Subject"] == "Acme has handed out 90% of its token pool"
        [post] = [
            p for p in receiver.at("/org") if p.headers["Tokendesk-Event"] == "pool.threshold"
        ]
        assert post.signed and json.loads(post.body)["pool"]["left"] == 38_000
        assert all(p.headers["Tokendesk-Event"] != "pool.threshold" for p in receiver.at("/alpha"))

    async def test_an_organization_without_a_threshold_is_never_told(
        self, database: Database, pooled: World
    ) -> None:
        async with database.transaction() as s:
            row = await s.get(OrgNotificationSettings, pooled.org_id)
            assert row is not None
            row.pool_threshold = None
        request = await submit(database, pooled.alice, amount=20_000)
        await decide(database, pooled.owner, request.id, "approve")
        assert await outbox(database, kind="pool.threshold") == []


class TestHousekeeping:
    async def test_records_that_can_no_longer_stop_a_repeat_are_forgotten(
        self, database: Database, world: World, worker: NotificationWorker, late: datetime
    ) -> None:
        await use(database, world.alice, world, 45_000, now=late)
        await worker.housekeeping(now=late + timedelta(days=60))
        async with database.transaction(write=False) as s:
            assert len(list(await s.scalars(select(ThresholdAlert)))) == 1
        await worker.housekeeping(now=late + timedelta(days=200))
        async with database.transaction(write=False) as s:
            assert list(await s.scalars(select(ThresholdAlert))) == []
