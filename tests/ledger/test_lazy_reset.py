from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from tests.factories import World
from tests.ledger.helpers import assert_ledger_consistent, count_entries, entries
from tests.ledger_support import balance_of
from tokendesk.accounts.models import User
from tokendesk.db import Database
from tokendesk.ledger import service as ledger
from tokendesk.ledger.models import EntryKind, LedgerEntry
from tokendesk.ledger.periods import period_bounds
from tokendesk.metering.service import UsageInput, record_usage


async def spend_a_period(database: Database, world: World) -> None:
    """Alice gets a grant and an adjustment, uses tokens and holds 2,000 for a call."""
    async with database.transaction() as s:
        await ledger.credit(
            s,
            user_id=world.alice.id,
            kind=EntryKind.GRANT,
            amount=10_000,
            actor_id=world.admin.id,
            reason="approved request",
        )
        await ledger.credit(
            s,
            user_id=world.alice.id,
            kind=EntryKind.ADJUSTMENT,
            amount=-3_000,
            actor_id=world.admin.id,
            reason="correction",
        )
        await record_usage(
            s,
            organization_id=world.org_id,
            events=[UsageInput("u1", world.alice.id, "gpt-4o", 4_000, 1_000)],
        )
        await ledger.reserve(s, user_id=world.alice.id, amount=2_000)


class TestLazyReset:
    async def test_reading_after_the_period_ended_starts_the_new_period_with_the_allocation(
        self, database: Database, world: World
    ) -> None:
        await spend_a_period(database, world)
        old = await balance_of(database, world.alice.id)
        assert (old.granted, old.adjusted, old.used, old.remaining) == (
            10_000,
            -3_000,
            5_000,
            50_000,
        )

        async with database.transaction() as s:
            balance = await ledger.get_balance(
                s, user_id=world.alice.id, now=old.period_end + timedelta(minutes=1)
            )

        assert balance.period_start == old.period_end
        assert (balance.allocation, balance.granted, balance.adjusted, balance.used) == (
            50_000,
            0,
            0,
            0,
        )
        assert balance.reserved == 2_000  # an in-flight call's hold carries over
        assert balance.remaining == 48_000
        await assert_ledger_consistent(database)

    async def test_the_new_period_gets_one_allocation_entry_however_often_it_is_read(
        self, database: Database, world: World
    ) -> None:
        await spend_a_period(database, world)
        end = (await balance_of(database, world.alice.id)).period_end

        for minutes in (1, 2, 60):
            async with database.transaction() as s:
                await ledger.get_balance(
                    s, user_id=world.alice.id, now=end + timedelta(minutes=minutes)
                )

        assert await count_entries(database, user_id=world.alice.id, period_start=end) == 1
        assert (await entries(database, world.alice.id))[-1] == (
            EntryKind.ALLOCATION.value,
            50_000,
            "monthly reset",
        )

    async def test_only_the_user_read_is_rolled_over(
        self, database: Database, world: World
    ) -> None:
        end = (await balance_of(database, world.alice.id)).period_end

        async with database.transaction() as s:
            await ledger.get_balance(s, user_id=world.alice.id, now=end)

        assert (await balance_of(database, world.alice.id)).period_start == end
        assert (await balance_of(database, world.bob.id)).period_end == end
        await assert_ledger_consistent(database)

    async def test_months_without_activity_roll_straight_into_the_current_period(
        self, database: Database, world: World
    ) -> None:
        end = (await balance_of(database, world.bob.id)).period_end
        much_later = end + timedelta(days=100)

        async with database.transaction() as s:
            balance = await ledger.get_balance(s, user_id=world.bob.id, now=much_later)

        expected = period_bounds(much_later, reset_day=1, timezone="UTC")
        assert (balance.period_start, balance.period_end) == expected
        assert balance.remaining == 100_000
        assert await count_entries(database, user_id=world.bob.id) == 2

    async def test_a_grant_after_the_period_ended_lands_in_the_new_period(
        self, database: Database, world: World
    ) -> None:
        end = (await balance_of(database, world.alice.id)).period_end

        async with database.transaction() as s:
            balance = await ledger.credit(
                s,
                user_id=world.alice.id,
                kind=EntryKind.GRANT,
                amount=700,
                actor_id=world.admin.id,
                reason="late approval",
                now=end + timedelta(hours=2),
            )

        assert (balance.period_start, balance.granted, balance.remaining) == (end, 700, 50_700)
        assert await count_entries(database, kind=EntryKind.GRANT.value, period_start=end) == 1
        await assert_ledger_consistent(database)

    async def test_reset_uses_the_allocation_rules_of_the_day(
        self, database: Database, world: World
    ) -> None:
        end = (await balance_of(database, world.alice.id)).period_end
        async with database.transaction() as s:
            alice = await s.get(User, world.alice.id)
            assert alice is not None
            alice.allocation_override = 7_000

        async with database.transaction() as s:
            balance = await ledger.get_balance(s, user_id=world.alice.id, now=end)

        assert balance.allocation == 7_000
        async with database.transaction(write=False) as s:
            entry = await s.scalar(
                select(LedgerEntry.amount).where(
                    LedgerEntry.user_id == world.alice.id, LedgerEntry.period_start == end
                )
            )
        assert entry == 7_000
