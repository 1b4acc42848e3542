"""A balance below zero at a period's end opens the next period as a debit."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import update

from tests.factories import World
from tests.ledger.helpers import assert_ledger_consistent, entries
from tests.ledger_support import balance_of
from tokendesk.accounts.models import Organization
from tokendesk.db import Database
from tokendesk.ledger import service as ledger
from tokendesk.ledger.models import EntryKind
from tokendesk.metering.service import UsageInput, record_usage


async def overspend(database: Database, world: World, *, by: int) -> None:
    """nora (5,000 a month) uses ``by`` tokens more than she has."""
    async with database.transaction() as s:
        await record_usage(
            s,
            organization_id=world.org_id,
            events=[UsageInput("over", world.nora.id, "gpt-4o", 1_000, 4_000 + by)],
        )


async def next_period(database: Database, world: World) -> None:
    old = await balance_of(database, world.nora.id)
    async with database.transaction() as s:
        await ledger.rollover_due(s, now=old.period_end + timedelta(minutes=1))


class TestCarryOver:
    async def test_overspend_opens_the_next_period_as_a_debit(
        self, database: Database, world: World
    ) -> None:
        await overspend(database, world, by=1_200)
        old = await balance_of(database, world.nora.id)
        assert old.remaining == -1_200
        await next_period(database, world)
        new = await balance_of(database, world.nora.id)
        assert (new.allocation, new.adjusted, new.used, new.remaining) == (5_000, -1_200, 0, 3_800)
        month = old.period_start.strftime("%B")
        assert (await entries(database, world.nora.id))[-2:] == [
            (EntryKind.ALLOCATION.value, 5_000, "monthly reset"),
            (EntryKind.CARRIED_DEBIT.value, -1_200, f"carried from {month}"),
        ]
        async with database.transaction(write=False) as s:
            fresh = await ledger.get_balance(s, user_id=world.nora.id, now=new.period_start)
            assert await ledger.carried_debit(s, balance=fresh) == -1_200
        await assert_ledger_consistent(database)

    async def test_a_debit_bigger_than_the_allocation_is_carried_again(
        self, database: Database, world: World
    ) -> None:
        await overspend(database, world, by=7_000)
        await next_period(database, world)
        await next_period(database, world)
        new = await balance_of(database, world.nora.id)
        assert (new.adjusted, new.remaining) == (-2_000, 3_000)
        await assert_ledger_consistent(database)

    async def test_a_balance_at_or_above_zero_carries_nothing(
        self, database: Database, world: World
    ) -> None:
        await overspend(database, world, by=0)
        await next_period(database, world)
        new = await balance_of(database, world.nora.id)
        assert (new.adjusted, new.remaining) == (0, 5_000)
        kinds = [kind for kind, _, _ in await entries(database, world.nora.id)]
        assert EntryKind.CARRIED_DEBIT.value not in kinds

    async def test_held_tokens_carry_over_as_holds_not_as_debt(
        self, database: Database, world: World
    ) -> None:
        async with database.transaction() as s:
            await ledger.reserve(s, user_id=world.nora.id, amount=4_000)
        await next_period(database, world)
        new = await balance_of(database, world.nora.id)
        assert (new.adjusted, new.reserved, new.remaining) == (0, 4_000, 1_000)
        await assert_ledger_consistent(database)

    async def test_organization_that_turned_carrying_off_starts_every_period_afresh(
        self, database: Database, world: World
    ) -> None:
        async with database.transaction() as s:
            await s.execute(
                update(Organization)
                .where(Organization.id == world.org_id)
                .values(carry_over_debt=False)
            )
        await overspend(database, world, by=1_200)
        await next_period(database, world)
        new = await balance_of(database, world.nora.id)
        assert (new.adjusted, new.remaining) == (0, 5_000)
        await assert_ledger_consistent(database)


class TestConcurrentReset:
    async def test_two_resets_racing_carry_the_debit_once(
        self, database: Database, world: World
    ) -> None:
        await overspend(database, world, by=1_200)
        old = await balance_of(database, world.nora.id)
        later = old.period_end + timedelta(minutes=1)

        async def reset() -> int:
            async with database.transaction() as s:
                return await ledger.rollover_due(s, now=later, user_ids=[world.nora.id])

        assert sorted(await asyncio.gather(reset(), reset())) == [0, 1]
        kinds = [kind for kind, _, _ in await entries(database, world.nora.id)]
        assert kinds.count(EntryKind.CARRIED_DEBIT.value) == 1
        assert (await balance_of(database, world.nora.id)).remaining == 3_800
        await assert_ledger_consistent(database)
