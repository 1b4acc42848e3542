from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import func, select

from tests.factories import World
from tests.ledger.helpers import assert_ledger_consistent, count_entries
from tests.ledger_support import balance_of
from tokendesk.db import Database
from tokendesk.events.bus import InProcessBus
from tokendesk.ledger import scheduler
from tokendesk.ledger import service as ledger
from tokendesk.ledger.models import Balance, EntryKind, Reservation, ReservationStatus

USERS_IN_WORLD = 9


class TestRunOnce:
    async def test_resets_every_ended_period_exactly_once(
        self, database: Database, world: World
    ) -> None:
        end = (await balance_of(database, world.alice.id)).period_end
        later = end + timedelta(seconds=1)

        first = await scheduler.run_once(database, now=later)
        second = await scheduler.run_once(database, now=later + timedelta(minutes=5))

        assert (first.reset, second.reset) == (USERS_IN_WORLD, 0)
        assert await count_entries(database, reason="monthly reset") == USERS_IN_WORLD
        async with database.transaction(write=False) as s:
            starts = set(await s.scalars(select(Balance.period_start)))
        assert starts == {end}
        await assert_ledger_consistent(database)

    async def test_does_nothing_before_the_boundary(self, database: Database, world: World) -> None:
        end = (await balance_of(database, world.alice.id)).period_end

        result = await scheduler.run_once(database, now=end - timedelta(microseconds=1))

        assert result.reset == 0
        assert await count_entries(database, reason="monthly reset") == 0

    async def test_granted_and_adjusted_end_with_the_period_and_allocations_return(
        self, database: Database, world: World
    ) -> None:
        async with database.transaction() as s:
            await ledger.credit(
                s,
                user_id=world.nora.id,
                kind=EntryKind.GRANT,
                amount=2_500,
                actor_id=world.admin.id,
                reason="approved",
            )
        end = (await balance_of(database, world.nora.id)).period_end

        await scheduler.run_once(database, now=end)

        nora = await balance_of(database, world.nora.id)
        assert (nora.allocation, nora.granted, nora.remaining) == (5_000, 0, 5_000)
        assert (
            await count_entries(
                database, user_id=world.nora.id, kind=EntryKind.ALLOCATION.value, period_start=end
            )
            == 1
        )

    async def test_members_are_told_of_their_reset_after_commit(
        self, database: Database, world: World, bus: InProcessBus
    ) -> None:
        end = (await balance_of(database, world.alice.id)).period_end

        async with bus.subscribe() as queue:
            await scheduler.run_once(database, now=end)
            events = [queue.get_nowait() for _ in range(queue.qsize())]

        resets = [e for e in events if e.type == "period.reset"]
        assert sorted(e.user_id for e in resets if e.user_id is not None) == sorted(
            p.id for p in world.people.values()
        )
        alice = next(e for e in resets if e.user_id == world.alice.id)
        assert alice.data["allocation"] == 50_000
        assert alice.data["period_start"] == end.isoformat()

    async def test_expires_forgotten_holds_in_the_same_tick(
        self, database: Database, world: World
    ) -> None:
        async with database.transaction() as s:
            hold = await ledger.reserve(s, user_id=world.bob.id, amount=1_000, ttl_seconds=60)

        result = await scheduler.run_once(database, now=hold.expires_at)

        assert result.expired == 1
        assert (await balance_of(database, world.bob.id)).reserved == 0
        await assert_ledger_consistent(database)

    async def test_five_concurrent_runs_write_one_set_of_entries(
        self, database: Database, world: World, backend: str
    ) -> None:
        # On PostgreSQL each run holds its own connection and transaction; the losers'
        # conditional UPDATE re-checks period_end after the winner commits and skips.
        end = (await balance_of(database, world.alice.id)).period_end
        async with database.transaction() as s:
            await ledger.reserve(s, user_id=world.amy.id, amount=300, ttl_seconds=1)

        results = await asyncio.gather(
            *(scheduler.run_once(database, now=end + timedelta(seconds=5)) for _ in range(5))
        )

        assert sum(r.reset for r in results) == USERS_IN_WORLD
        assert sum(r.expired for r in results) == 1
        assert await count_entries(database, reason="monthly reset") == USERS_IN_WORLD
        async with database.transaction(write=False) as s:
            statuses = list(await s.scalars(select(Reservation.status)))
            held = await s.scalar(select(func.sum(Balance.reserved)))
        assert statuses == [ReservationStatus.EXPIRED.value]
        assert held == 0
        await assert_ledger_consistent(database)
