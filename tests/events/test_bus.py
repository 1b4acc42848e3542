"""The event buses: routing in one process, and LISTEN/NOTIFY across processes."""

from __future__ import annotations

import asyncio

import pytest

from tokendesk.events.bus import Event, InProcessBus
from tokendesk.events.pg_bus import MAX_PAYLOAD, PostgresBus, pack


def user_event(user_id: int) -> Event:
    return Event(
        type="balance.changed", data={"user_id": user_id}, user_id=user_id, organization_id=1
    )


def queue_event(org: int) -> Event:
    return Event(type="queue.changed", data={}, organization_id=org, audience="admins")


class TestInProcessRouting:
    async def test_user_events_reach_only_that_users_streams(self) -> None:
        bus = InProcessBus()
        async with bus.subscribe(user_id=1) as alice, bus.subscribe(user_id=2) as bob:
            await bus.publish([user_event(1)])
            assert alice.qsize() == 1 and bob.empty()

    async def test_queue_events_reach_admins_of_that_organization_only(self) -> None:
        bus = InProcessBus()
        async with (
            bus.subscribe(user_id=1, admin_organization_id=7) as admin,
            bus.subscribe(user_id=2, admin_organization_id=8) as other_admin,
            bus.subscribe(user_id=3) as member,
        ):
            await bus.publish([queue_event(7)])
            assert admin.qsize() == 1 and other_admin.empty() and member.empty()

    async def test_a_stuck_subscriber_is_dropped_instead_of_blocking_others(self) -> None:
        bus = InProcessBus(queue_size=1)
        async with bus.subscribe(user_id=1) as stuck, bus.subscribe(user_id=1) as reader:
            await bus.publish([user_event(1)])
            reader.get_nowait()
            # `stuck` is full now: this event drops it, and `reader` still gets it.
            await bus.publish([user_event(1)])
            assert reader.qsize() == 1
            reader.get_nowait()
            stuck.get_nowait()
            await bus.publish([user_event(1)])
            assert reader.qsize() == 1 and stuck.empty()


class TestPacking:
    def test_many_events_are_packed_under_the_notify_limit(self) -> None:
        events = [user_event(n) for n in range(2000)]
        payloads = pack(events)
        assert len(payloads) > 1
        assert all(len(p) <= MAX_PAYLOAD for p in payloads)
        assert sum(p.count('"t":') for p in payloads) == 2000


class TestPostgresBus:
    async def test_an_event_published_by_one_process_reaches_another(
        self, backend: str, db_url: str
    ) -> None:
        if backend != "postgres":
            pytest.skip("LISTEN/NOTIFY needs PostgreSQL")
        sender, receiver = PostgresBus(db_url), PostgresBus(db_url)
        await sender.start()
        await receiver.start()
        try:
            async with receiver.subscribe(user_id=42) as queue:
                await sender.publish([user_event(42), user_event(43)])
                event = await asyncio.wait_for(queue.get(), 5)
                assert (event.type, event.user_id) == ("balance.changed", 42)
                await sender.publish([user_event(42)])
                assert (await asyncio.wait_for(queue.get(), 5)).user_id == 42
        finally:
            await sender.stop()
            await receiver.stop()
