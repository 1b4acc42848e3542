"""The daily digest: at the organization's local hour, once a day per approver, only
when something is pending, off by default."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from tests.factories import Person, World, add_beta_owner
from tests.notifications.receivers import Mailbox
from tests.notifications.support import outbox
from tests.token_requests.support import actor_for, submit
from tokendesk.accounts.models import Organization
from tokendesk.db import Database
from tokendesk.ledger import scheduler
from tokendesk.notifications import digest, preferences
from tokendesk.notifications import repository as repo
from tokendesk.notifications.models import DigestSent, OrgNotificationSettings
from tokendesk.notifications.schemas import PreferencesIn
from tokendesk.notifications.worker import NotificationWorker

# 09:30 in Berlin in December (UTC+1): the digest hour 9 there.
AT_NINE = datetime(2026, 12, 8, 8, 30, tzinfo=UTC)


@pytest.fixture
async def berlin(database: Database, world: World) -> World:
    async with database.transaction() as s:
        org = await s.get(Organization, world.org_id)
        assert org is not None
        org.timezone = "Europe/Berlin"
        s.add(
            OrgNotificationSettings(
                organization_id=world.org_id, digest_enabled=True, digest_hour=9
            )
        )
    return world


async def queue(database: Database, now: datetime) -> int:
    async with database.transaction() as s:
        return await digest.queue_due(s, now=now)


async def digests(database: Database) -> dict[int, int]:
    """Each approver's digest: how many requests it counts."""
    return {
        row.user_id or 0: int((row.details or {})["count"])
        for row in await outbox(database, kind="requests.digest")
    }


class TestDigest:
    async def test_each_approver_hears_of_their_own_pending_requests(
        self,
        database: Database,
        berlin: World,
        worker: NotificationWorker,
        mailbox: Mailbox,
    ) -> None:
        world = berlin
        bea: Person = await add_beta_owner(database, world)
        await submit(database, world.alice, amount=1_000)
        await submit(database, world.amy, amount=2_000)
        await submit(database, world.bob, amount=3_000)
        await submit(database, world.nora, amount=500)
        assert await queue(database, AT_NINE) == 3
        assert await digests(database) == {world.owner.id: 2, bea.id: 1, world.admin.id: 1}
        await worker.drain(now=AT_NINE)
        [mail] = [m for m in mailbox.to("owner@example.com") if "waiting" in m["Subject"]]
        assert mail["Subject"] == "2 token requests waiting for you"
        text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert "Alice" in text and "Amy" in text and "Bob" not in text
        # The three approvers alone: nobody of the other organization, no member.
        sent = [m["To"] for m in mailbox.mails if "waiting for you" in m["Subject"]]
        assert sorted(to.split("<")[-1].rstrip(">") for to in sent) == [
            "admin@example.com",
            "bea@example.com",
            "owner@example.com",
        ]

    async def test_only_at_the_local_hour_and_once_a_day(
        self, database: Database, berlin: World
    ) -> None:
        await submit(database, berlin.alice, amount=1_000)
        assert await queue(database, AT_NINE - timedelta(hours=1)) == 0
        assert await queue(database, AT_NINE + timedelta(hours=1)) == 0
        assert await queue(database, AT_NINE) == 1
        assert await queue(database, AT_NINE + timedelta(minutes=20)) == 0
        assert await queue(database, AT_NINE + timedelta(days=1)) == 1
        assert len(await outbox(database, kind="requests.digest")) == 2

    async def test_nothing_pending_sends_nothing(self, database: Database, berlin: World) -> None:
        assert await queue(database, AT_NINE) == 0
        assert await outbox(database) == []

    async def test_off_by_default(self, database: Database, world: World) -> None:
        await submit(database, world.alice, amount=1_000)
        for hour in range(24):
            assert await queue(database, AT_NINE + timedelta(hours=hour)) == 0

    async def test_the_scheduler_queues_them(self, database: Database, berlin: World) -> None:
        await submit(database, berlin.alice, amount=1_000)
        result = await scheduler.run_once(database, now=AT_NINE)
        assert result.digests == 1
        assert (await scheduler.run_once(database, now=AT_NINE)).digests == 0

    async def test_several_instances_at_once_send_each_digest_once(
        self, postgres_only: None, db_url: str, database: Database, berlin: World
    ) -> None:
        await submit(database, berlin.alice, amount=1_000)
        await submit(database, berlin.nora, amount=1_000)
        instances = [Database(db_url) for _ in range(3)]
        try:
            counts = await asyncio.gather(*(queue(i, AT_NINE) for i in instances))
        finally:
            for instance in instances:
                await instance.dispose()
        assert sum(counts) == 2
        assert await digests(database) == {berlin.owner.id: 1, berlin.admin.id: 1}

    async def test_an_approver_who_turned_it_off_gets_none(
        self, database: Database, berlin: World
    ) -> None:
        actor = await actor_for(database, berlin.owner)
        async with database.transaction() as s:
            await preferences.update(s, actor=actor, data=PreferencesIn(daily_digest=False))
        await submit(database, berlin.alice, amount=1_000)
        await submit(database, berlin.nora, amount=1_000)
        assert await queue(database, AT_NINE) == 1
        assert await digests(database) == {berlin.admin.id: 1}

    async def test_past_days_records_are_forgotten_and_today_stays_sent(
        self, database: Database, berlin: World
    ) -> None:
        await submit(database, berlin.alice, amount=1_000)
        assert await queue(database, AT_NINE) == 1
        async with database.transaction() as s:
            await repo.prune(s, before=AT_NINE)
        assert await queue(database, AT_NINE + timedelta(minutes=10)) == 0
        async with database.transaction() as s:
            await repo.prune(s, before=AT_NINE + timedelta(days=2))
        async with database.transaction(write=False) as s:
            assert list(await s.scalars(select(DigestSent))) == []
