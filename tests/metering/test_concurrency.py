"""Usage batches racing each other in separate transactions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from tests.factories import World
from tests.ledger_support import balance_of
from tests.metering.helpers import assert_ledger_consistent, usage
from tokendesk.db import Database
from tokendesk.metering.models import UsageEvent
from tokendesk.metering.service import UsageResult, record_usage

BATCHES = 5
PER_BATCH = 10


@pytest.fixture
async def sessions(
    database: Database, backend: str
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    if backend != "postgres":
        pytest.skip("needs PostgreSQL's concurrent connections")
    engine = create_async_engine(database.url, poolclass=NullPool)
    yield async_sessionmaker(engine, expire_on_commit=False)
    await engine.dispose()


class TestConcurrentBatchesOnPostgres:
    async def test_batches_for_one_user_each_see_the_balance_left_by_the_others(
        self, database: Database, world: World, sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        ready = asyncio.Barrier(BATCHES)

        async def batch(b: int) -> list[UsageResult]:
            async with sessions() as s, s.begin():
                await s.execute(text("SELECT 1"))
                await ready.wait()
                return await record_usage(
                    s,
                    organization_id=world.org_id,
                    events=[usage(f"{b}-{i}", world.alice.id, 100) for i in range(PER_BATCH)],
                )

        results = await asyncio.wait_for(
            asyncio.gather(*(batch(b) for b in range(BATCHES))), timeout=60
        )

        remaining = sorted(r.remaining for rs in results for r in rs)
        total = BATCHES * PER_BATCH
        assert remaining == [50_000 - 100 * k for k in range(total, 0, -1)]
        assert (await balance_of(database, world.alice.id)).used == 100 * total
        await assert_ledger_consistent(database)

    async def test_an_id_stored_by_a_batch_that_commits_first_becomes_a_replay(
        self, database: Database, world: World, sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        async with sessions() as first, first.begin():
            [won] = await record_usage(
                first, organization_id=world.org_id, events=[usage("x", world.alice.id, 100)]
            )

            async def second_batch() -> list[UsageResult]:
                async with sessions() as s, s.begin():
                    pid = await s.scalar(text("SELECT pg_backend_pid()"))
                    waiting.set_result(pid)
                    return await record_usage(
                        s,
                        organization_id=world.org_id,
                        events=[usage("x", world.bob.id, 100), usage("y", world.bob.id, 50)],
                    )

            waiting: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            racing = asyncio.create_task(second_batch())
            pid = await waiting
            # The second batch now waits on our uncommitted insert of "x".
            for _ in range(500):
                blocked = await first.scalar(
                    text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :pid"),
                    {"pid": pid},
                )
                if blocked:
                    break
                await asyncio.sleep(0.01)
            assert blocked, "the second batch never waited on the first"

        replayed, fresh = await asyncio.wait_for(racing, timeout=30)

        assert replayed == UsageResult("x", won.usage_event_id, world.alice.id, 100, 49_900, True)
        assert (fresh.replayed, fresh.remaining) == (False, 99_950)
        assert (await balance_of(database, world.bob.id)).used == 50
        async with database.transaction(write=False) as s:
            stored = await s.scalar(
                select(UsageEvent.balance_after).where(UsageEvent.event_id == "y")
            )
        assert stored == 99_950
        await assert_ledger_consistent(database)


class TestConcurrentBatchesOnSQLite:
    async def test_writers_on_separate_engines_queue_and_charge_every_event_once(
        self, database: Database, world: World, backend: str
    ) -> None:
        if backend != "sqlite":
            pytest.skip("SQLite's file lock between separate engines")
        engines = [Database(database.url) for _ in range(BATCHES)]

        async def batch(b: int) -> list[UsageResult]:
            async with engines[b].transaction() as s:
                return await record_usage(
                    s,
                    organization_id=world.org_id,
                    # Every batch also repeats one shared id: exactly one of them charges it.
                    events=[usage(f"{b}-{i}", world.alice.id, 100) for i in range(PER_BATCH)]
                    + [usage("shared", world.alice.id, 1_000)],
                )

        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(batch(b) for b in range(BATCHES))), timeout=60
            )
        finally:
            for db in engines:
                await db.dispose()

        shared = [rs[-1] for rs in results]
        assert sorted(r.replayed for r in shared) == [False] + [True] * (BATCHES - 1)
        assert len({r.remaining for r in shared}) == 1
        assert (
            await balance_of(database, world.alice.id)
        ).used == 100 * BATCHES * PER_BATCH + 1_000
        await assert_ledger_consistent(database)
