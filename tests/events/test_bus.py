"""The event buses: routing in one process, and LISTEN/NOTIFY across processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tokendesk.events.bus import RESYNC, Event, InProcessBus
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

    async def test_a_resync_reaches_every_subscriber_whatever_it_asked_for(self) -> None:
        bus = InProcessBus()
        async with (
            bus.subscribe(user_id=1) as member,
            bus.subscribe(user_id=2, admin_organization_id=7) as admin,
            bus.subscribe(system=True) as system,
            bus.subscribe() as everything,
        ):
            bus.resync()
            for queue in (member, admin, system, everything):
                assert queue.get_nowait().type == RESYNC
                assert queue.empty()


class TestPacking:
    def test_many_events_are_packed_under_the_notify_limit(self) -> None:
        events = [user_event(n) for n in range(2000)]
        payloads = pack(events)
        assert len(payloads) > 1
        assert all(len(p) <= MAX_PAYLOAD for p in payloads)
        assert sum(p.count('"t":') for p in payloads) == 2000


@pytest.fixture
async def two_buses(
    postgres_only: None, db_url: str
) -> AsyncIterator[tuple[PostgresBus, PostgresBus]]:
    """A sender's and a receiver's bus, as two processes have them."""
    sender, receiver = PostgresBus(db_url), PostgresBus(db_url)
    await sender.start()
    await receiver.start()
    try:
        yield sender, receiver
    finally:
        await sender.stop()
        await receiver.stop()


class TestPostgresBus:
    async def test_an_event_published_by_one_process_reaches_another(
        self, two_buses: tuple[PostgresBus, PostgresBus]
    ) -> None:
        sender, receiver = two_buses
        async with receiver.subscribe(user_id=42) as queue:
            await sender.publish([user_event(42), user_event(43)])
            event = await asyncio.wait_for(queue.get(), 5)
            assert (event.type, event.user_id) == ("balance.changed", 42)
            await sender.publish([user_event(42)])
            assert (await asyncio.wait_for(queue.get(), 5)).user_id == 42

    async def test_a_dropped_listener_listens_again_and_resyncs_its_subscribers(
        self, two_buses: tuple[PostgresBus, PostgresBus], db_url: str
    ) -> None:
        sender, receiver = two_buses
        async with receiver.subscribe(user_id=42) as queue:
            listener = receiver._listener
            assert listener is not None
            # What a database restart does to the listening session.
            admin = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
            try:
                await admin.execute("SELECT pg_terminate_backend($1)", listener.get_server_pid())
            finally:
                await admin.close()
            assert (await asyncio.wait_for(queue.get(), 10)).type == RESYNC
            assert receiver.listening
            await sender.publish([user_event(42)])
            assert (await asyncio.wait_for(queue.get(), 5)).user_id == 42

    async def test_a_notify_that_fails_after_commit_is_delivered_here_and_raises_nothing(
        self, two_buses: tuple[PostgresBus, PostgresBus]
    ) -> None:
        sender, _ = two_buses
        async with sender.subscribe(user_id=42) as queue:
            # Its connections gone, as a restart leaves them.
            assert sender._pool is not None
            await sender._pool.close()
            await sender.publish([user_event(42)])
            assert queue.get_nowait().user_id == 42
