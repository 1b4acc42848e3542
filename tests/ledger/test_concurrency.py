"""Holds under real concurrent transactions: the balance is never overspent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from tests.accounts.support import actor_of
from tests.factories import World
from tests.ledger.helpers import assert_ledger_consistent
from tests.ledger_support import balance_of
from tokendesk.accounts.organizations import update_settings
from tokendesk.accounts.schemas import OrganizationUpdate
from tokendesk.db import Database
from tokendesk.errors import InsufficientTokens
from tokendesk.ledger import service as ledger
from tokendesk.ledger.models import Reservation

CALLERS = 40
HOLD = 2_000  # 40 x 2,000 = 80,000 asked of alice's 50,000


async def count_holds(database: Database, user_id: int) -> tuple[int, int]:
    async with database.transaction(write=False) as s:
        row = (
            await s.execute(
                select(func.count(), func.coalesce(func.sum(Reservation.amount), 0)).where(
                    Reservation.user_id == user_id
                )
            )
        ).one()
    return int(row[0]), int(row[1])


class TestConcurrentReservesOnPostgres:
    @pytest.fixture
    async def sessions(
        self, database: Database, backend: str
    ) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
        if backend != "postgres":
            pytest.skip("needs PostgreSQL's concurrent connections")
        # One connection per caller, not the app's pool: every reserve() is its own transaction.
        engine = create_async_engine(database.url, poolclass=NullPool)
        yield async_sessionmaker(engine, expire_on_commit=False)
        await engine.dispose()

    async def test_forty_concurrent_holds_never_exceed_the_balance(
        self, database: Database, world: World, sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        # Every caller opens its transaction first, then all reserve at once.
        ready = asyncio.Barrier(CALLERS)

        async def caller() -> bool:
            async with sessions() as s, s.begin():
                await s.execute(text("SELECT 1"))
                await ready.wait()
                try:
                    await ledger.reserve(s, user_id=world.alice.id, amount=HOLD)
                except InsufficientTokens:
                    return False
            return True

        outcomes = await asyncio.wait_for(
            asyncio.gather(*(caller() for _ in range(CALLERS))), timeout=120
        )

        granted = outcomes.count(True)
        holds, held = await count_holds(database, world.alice.id)
        balance = await balance_of(database, world.alice.id)
        assert granted == 50_000 // HOLD
        assert (holds, held) == (granted, granted * HOLD)
        assert held <= 50_000
        assert balance.remaining == 50_000 - held >= 0
        await assert_ledger_consistent(database)


class TestConcurrentWritersOnSQLite:
    async def test_separate_processes_worth_of_writers_wait_and_never_overspend(
        self, database: Database, world: World, backend: str
    ) -> None:
        if backend != "sqlite":
            pytest.skip("SQLite's file lock between separate engines")
        # Four engines on one file behave like four server processes: each has its own
        # in-process lock, so only BEGIN IMMEDIATE and the busy timeout keep them in line.
        engines = [Database(database.url) for _ in range(4)]

        async def caller(db: Database) -> bool:
            try:
                async with db.transaction() as s:
                    await ledger.reserve(s, user_id=world.nora.id, amount=250)
            except InsufficientTokens:
                return False
            return True

        try:
            outcomes = await asyncio.wait_for(
                asyncio.gather(*(caller(engines[i % 4]) for i in range(CALLERS))), timeout=120
            )
        finally:
            for db in engines:
                await db.dispose()

        holds, held = await count_holds(database, world.nora.id)
        assert outcomes.count(True) == holds == 5_000 // 250
        assert held == 5_000
        assert (await balance_of(database, world.nora.id)).remaining == 0
        await assert_ledger_consistent(database)


class TestOrganizationLocksBesideSettlements:
    """A settlement holds its member's balance row and then inserts usage, whose key
    refers to the organization; a pool-checked change holds the organization and then
    waits for balances. Neither may wait for the other."""

    @pytest.fixture
    async def sessions(
        self, database: Database, backend: str
    ) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
        if backend != "postgres":
            pytest.skip("needs PostgreSQL's concurrent connections")
        engine = create_async_engine(database.url, poolclass=NullPool)
        yield async_sessionmaker(engine, expire_on_commit=False)
        await engine.dispose()

    async def test_a_settings_change_waits_for_a_settlement_that_inserts_usage(
        self, database: Database, world: World, sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        actor = await actor_of(database, world.admin)

        async with sessions() as settling, settling.begin():
            await settling.execute(
                text("SELECT user_id FROM balances WHERE user_id = :u FOR UPDATE"),
                {"u": world.alice.id},
            )

            async def change() -> None:
                async with sessions() as s, s.begin():
                    await update_settings(
                        s, actor=actor, data=OrganizationUpdate(low_balance_percent=50)
                    )

            changing = asyncio.create_task(change())
            await _waiting_for_a_lock(settling)
            # The settlement's usage row: its key takes a share of the organization's.
            await settling.execute(
                text(
                    "INSERT INTO usage_events (organization_id, event_id, user_id, model,"
                    " prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens,"
                    " total_tokens, source, occurred_at, day, recorded_at, balance_after)"
                    " VALUES (:o, 'settled-1', :u, 'fast', 1, 1, 0, 0, 2, 'gateway', now(),"
                    " current_date, now(), 0)"
                ),
                {"o": world.org_id, "u": world.alice.id},
            )
        await asyncio.wait_for(changing, timeout=30)


async def _waiting_for_a_lock(session: AsyncSession) -> None:
    """Until another connection waits for a row lock (at most 10 seconds)."""
    for _ in range(200):
        # Within a transaction, PostgreSQL shows the activity as of its first look.
        await session.execute(text("SELECT pg_stat_clear_snapshot()"))
        waiting = await session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            )
        )
        if waiting:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the settings change never waited for the balance")
