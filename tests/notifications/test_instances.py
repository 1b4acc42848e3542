"""Several workers at once, and the worker the server runs."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from tests.factories import World
from tests.notifications.receivers import Receiver
from tests.notifications.support import add_webhook, outbox
from tests.serving import serving
from tokendesk.app import create_app
from tokendesk.config import Settings
from tokendesk.db import Database, utcnow
from tokendesk.notifications import outbox as queue
from tokendesk.notifications.worker import NotificationWorker

COUNT = 300


async def _queue_tests(database: Database, world: World, webhook_id: int, count: int) -> None:
    async with database.transaction() as s:
        for _ in range(count):
            await queue.queue_test(
                s, organization_id=world.org_id, webhook_id=webhook_id, now=utcnow()
            )


class TestTwoInstances:
    async def test_two_instances_deliver_each_notification_once(
        self,
        postgres_only: None,
        db_url: str,
        database: Database,
        world: World,
        settings: Settings,
        receiver: Receiver,
    ) -> None:
        hook = await add_webhook(database, world.admin, receiver, "/many")
        await _queue_tests(database, world, hook, COUNT)
        small = settings.model_copy(update={"notify_batch_size": 25})
        engines = [Database(db_url), Database(db_url)]
        workers = [NotificationWorker(small, engine) for engine in engines]
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(w.drain(max_ticks=100) for w in workers)), 120
            )
        finally:
            for w in workers:
                await w.close()
            for engine in engines:
                await engine.dispose()
        keys = Counter(p.key for p in receiver.at("/many"))
        assert len(keys) == COUNT
        assert set(keys.values()) == {1}
        assert sum(r.sent for r in results) == COUNT
        # Both took part: the claims skipped each other's rows rather than queueing.
        assert all(r.sent > 0 for r in results)
        rows = await outbox(database, channel="webhook")
        assert {(r.status, r.attempts) for r in rows} == {("sent", 1)}

    async def test_two_workers_of_one_process_deliver_each_once(
        self, database: Database, world: World, settings: Settings, receiver: Receiver
    ) -> None:
        hook = await add_webhook(database, world.admin, receiver, "/many")
        await _queue_tests(database, world, hook, 100)
        small = settings.model_copy(update={"notify_batch_size": 10})
        workers = [NotificationWorker(small, database) for _ in range(2)]
        try:
            await asyncio.wait_for(asyncio.gather(*(w.drain(max_ticks=50) for w in workers)), 60)
        finally:
            for w in workers:
                await w.close()
        keys = Counter(p.key for p in receiver.at("/many"))
        assert len(keys) == 100 and set(keys.values()) == {1}


class TestInTheServer:
    async def test_the_servers_worker_delivers_a_new_request_at_once(
        self, database: Database, world: World, settings: Settings, receiver: Receiver
    ) -> None:
        await add_webhook(database, world.admin, receiver, "/live")
        # A long poll: only the wake-up after the commit can deliver within the test.
        live = settings.model_copy(
            update={"notify_worker_enabled": True, "notify_poll_seconds": 600}
        )
        app = create_app(live, database=database)
        async with serving(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                response = await http.post(
                    "/api/v1/token-requests", json={"amount": 1_000}, headers=world.alice.headers
                )
                assert response.status_code == 201, response.text
                await asyncio.wait_for(receiver.arrived.wait(), 20)
        [post] = receiver.at("/live")
        assert post.signed

    async def test_stopping_the_server_stops_its_worker(
        self, database: Database, settings: Settings
    ) -> None:
        live = settings.model_copy(update={"notify_worker_enabled": True})
        app = create_app(live, database=database)
        async with serving(app):
            task = app.state.runtime.notifier
            assert task is not None and not task.done()
        assert task.cancelled()
