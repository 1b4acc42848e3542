"""The outbox in ``/metrics``: its depth and given-up notifications by channel (read
from the database at scrape time) and each delivery's outcome (counted by the worker)."""

from __future__ import annotations

from datetime import timedelta

import httpx

from tests.factories import World
from tests.notifications.receivers import Mailbox, Receiver
from tests.notifications.support import add_webhook
from tests.observability.conftest import scrape
from tests.serving import serving
from tokendesk.app import create_app
from tokendesk.config import Settings
from tokendesk.db import Database, utcnow
from tokendesk.notifications import outbox as queue

PENDING = "tokendesk_notifications_pending"
FAILED = "tokendesk_notifications_failed"
DELIVERIES = "tokendesk_notification_deliveries_total"


class TestOutboxMetrics:
    async def test_depth_failures_and_deliveries_by_channel(
        self,
        database: Database,
        world: World,
        settings: Settings,
        receiver: Receiver,
        mailbox: Mailbox,
    ) -> None:
        hook = await add_webhook(database, world.admin, receiver, "/down")
        receiver.failures_left = 1_000
        now = utcnow()
        async with database.transaction() as s:
            await queue.queue_test(s, organization_id=world.org_id, user_id=world.admin.id, now=now)
            await queue.queue_test(s, organization_id=world.org_id, webhook_id=hook, now=now)
        app = create_app(settings, database=database)
        async with (
            serving(app) as runtime,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://test"
            ) as http,
        ):
            before = await scrape(http)
            assert before.value(PENDING, channel="email") == 1
            assert before.value(PENDING, channel="webhook") == 1
            assert before.value(DELIVERIES, channel="email", outcome="sent") == 0
            worker = runtime.notifications
            await worker.run_once(now=now)
            tried = await scrape(http)
            assert tried.value(PENDING, channel="email") == 0
            assert tried.value(PENDING, channel="webhook") == 1
            assert tried.value(DELIVERIES, channel="email", outcome="sent") == 1
            assert tried.value(DELIVERIES, channel="webhook", outcome="retry") == 1
            give_up = now + timedelta(hours=settings.notify_give_up_hours, minutes=1)
            await worker.run_once(now=give_up)
            after = await scrape(http)
            assert after.value(PENDING, channel="webhook") == 0
            assert after.value(FAILED, channel="webhook") == 1
            assert after.value(DELIVERIES, channel="webhook", outcome="failed") == 1
            assert after.value(DELIVERIES, channel="webhook", outcome="retry") == 1
            # The outbox's families are labelled by channel and outcome alone: never a
            # person, a webhook or an organization.
            names = {
                k for f in (PENDING, FAILED, DELIVERIES) for s in after.samples[f] for k, _ in s
            }
            assert names == {"channel", "outcome"}
        assert mailbox.recipients() == ["admin@example.com"]
