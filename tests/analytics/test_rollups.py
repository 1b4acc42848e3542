"""The rollups analytics reads always equal the sums of the raw usage events."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import select

from tests.analytics.support import at, d, record, rollup_differences, spend
from tests.factories import World, make_world
from tokendesk.accounts.models import User
from tokendesk.db import Database
from tokendesk.ledger.models import Balance
from tokendesk.metering.models import (
    ALL_MODELS,
    NO_TEAM,
    UsageCumulative,
    UsageSeries,
    UsageTeamDaily,
)

NOW = at(3, 20)


async def running_totals(database: Database, user_id: int) -> list[tuple[object, int, int]]:
    """(day, tokens, calls) of the user's all-models running totals, in day order."""
    async with database.transaction(write=False) as s:
        rows = await s.execute(
            select(UsageCumulative.day, UsageCumulative.tokens, UsageCumulative.calls)
            .join(UsageSeries, UsageSeries.id == UsageCumulative.series_id)
            .where(UsageSeries.user_id == user_id, UsageSeries.model == ALL_MODELS)
            .order_by(UsageCumulative.day)
        )
        return [tuple(row) for row in rows]


class TestRollupsEqualRawEvents:
    async def test_a_batch_over_days_users_and_models_adds_up_in_every_rollup(
        self, database: Database, world: World
    ) -> None:
        await record(
            database,
            world.org_id,
            spend("1", world.alice, 100, at(3, 3)),
            spend("2", world.alice, 200, at(3, 3, 23)),
            spend("3", world.alice, 40, at(3, 3), model="claude"),
            spend("4", world.bob, 7, at(3, 4, 0)),
            spend("5", world.nora, 9, at(3, 4, 1)),
            now=NOW,
        )

        assert await rollup_differences(database, world.org_id) == []
        assert await running_totals(database, world.alice.id) == [(d(3, 3), 340, 3)]

    async def test_replayed_events_add_nothing(self, database: Database, world: World) -> None:
        first = spend("same", world.alice, 100, at(3, 3))
        await record(database, world.org_id, first, first, now=NOW)
        await record(database, world.org_id, first, spend("new", world.alice, 5, at(3, 4)), now=NOW)

        assert await rollup_differences(database, world.org_id) == []
        assert await running_totals(database, world.alice.id) == [
            (d(3, 3), 100, 1),
            (d(3, 4), 105, 2),
        ]

    async def test_an_event_for_an_earlier_day_raises_every_later_running_total(
        self, database: Database, world: World
    ) -> None:
        await record(database, world.org_id, spend("late", world.alice, 10, at(3, 10)), now=NOW)
        await record(database, world.org_id, spend("later", world.alice, 20, at(3, 12)), now=NOW)

        await record(
            database,
            world.org_id,
            spend("early", world.alice, 1, at(3, 2)),
            spend("middle", world.alice, 300, at(3, 11)),
            spend("same-day", world.alice, 4000, at(3, 10, 18)),
            now=NOW,
        )

        assert await rollup_differences(database, world.org_id) == []
        assert await running_totals(database, world.alice.id) == [
            (d(3, 2), 1, 1),
            (d(3, 10), 4011, 3),
            (d(3, 11), 4311, 4),
            (d(3, 12), 4331, 5),
        ]

    async def test_a_one_day_batch_keeps_exact_totals_where_some_series_already_run_later(
        self, database: Database, world: World
    ) -> None:
        await record(database, world.org_id, spend("ahead", world.bob, 50, at(3, 12)), now=NOW)
        await record(database, world.org_id, spend("bob-10", world.bob, 7, at(3, 10)), now=NOW)
        await record(database, world.org_id, spend("alice-10", world.alice, 9, at(3, 10)), now=NOW)

        # One day for everyone: Alice's series end on it, Bob's run two days later.
        await record(
            database,
            world.org_id,
            spend("alice", world.alice, 100, at(3, 10, 20)),
            spend("bob", world.bob, 1_000, at(3, 10, 21)),
            spend("bob-claude", world.bob, 3, at(3, 10, 22), model="claude"),
            now=NOW,
        )

        assert await rollup_differences(database, world.org_id) == []
        assert await running_totals(database, world.alice.id) == [(d(3, 10), 109, 2)]
        assert await running_totals(database, world.bob.id) == [
            (d(3, 10), 1_010, 3),
            (d(3, 12), 1_060, 4),
        ]

    async def test_rollups_run_on_across_a_period_reset_while_the_balance_restarts(
        self, database: Database, world: World
    ) -> None:
        await record(
            database, world.org_id, spend("feb", world.alice, 300, at(2, 27)), now=at(2, 28)
        )

        await record(database, world.org_id, spend("mar", world.alice, 50, at(3, 1, 1)), now=NOW)

        assert await rollup_differences(database, world.org_id) == []
        assert await running_totals(database, world.alice.id) == [
            (d(2, 27), 300, 1),
            (d(3, 1), 350, 2),
        ]
        async with database.transaction(write=False) as s:
            balance = await s.get(Balance, world.alice.id)
            assert balance is not None and balance.used == 50

    async def test_usage_keeps_the_team_it_was_spent_in(
        self, database: Database, world: World
    ) -> None:
        await record(database, world.org_id, spend("in-alpha", world.alice, 10, at(3, 3)), now=NOW)
        async with database.transaction() as s:
            alice = await s.get(User, world.alice.id)
            assert alice is not None
            alice.team_id = None

        await record(database, world.org_id, spend("no-team", world.alice, 20, at(3, 3)), now=NOW)

        assert await rollup_differences(database, world.org_id) == []
        async with database.transaction(write=False) as s:
            rows = await s.execute(
                select(UsageTeamDaily.team_id, UsageTeamDaily.total_tokens).order_by(
                    UsageTeamDaily.team_id
                )
            )
            assert [tuple(row) for row in rows] == [(NO_TEAM, 20), (world.team_a, 10)]

    async def test_the_rollup_day_is_the_organizations_calendar_day(
        self, database: Database
    ) -> None:
        berlin = await make_world(database, timezone="Europe/Berlin")
        # 23:30 UTC on 28 February is 00:30 on 1 March in Berlin (UTC+1 in winter).
        await record(
            database, berlin.org_id, spend("late", berlin.alice, 70, at(2, 28, 23, 30)), now=NOW
        )

        assert await rollup_differences(database, berlin.org_id) == []
        async with database.transaction(write=False) as s:
            assert list(await s.scalars(select(UsageTeamDaily.day))) == [d(3, 1)]

    async def test_concurrent_batches_of_one_team_keep_the_rollups_exact(
        self, database: Database, world: World
    ) -> None:
        people = [world.alice, world.amy, world.owner]

        async def batch(n: int) -> None:
            who = people[n % len(people)]
            events = [spend(f"c{n}-{i}", who, 10 + i, at(3, 1 + i % 5)) for i in range(10)]
            await record(database, world.org_id, *events, now=NOW)

        await asyncio.gather(*(batch(n) for n in range(12)))

        assert await rollup_differences(database, world.org_id) == []
        total = sum(10 + i for i in range(10)) * 12
        async with database.transaction(write=False) as s:
            rollup = sum(await s.scalars(select(UsageTeamDaily.total_tokens)))
        assert rollup == total

    async def test_late_events_long_after_the_first_keep_every_day_exact(
        self, database: Database, world: World
    ) -> None:
        days = [at(1, 5) + timedelta(days=n) for n in range(0, 70, 3)]
        for n, when in enumerate(reversed(days)):
            await record(database, world.org_id, spend(f"r{n}", world.bob, n + 1, when), now=NOW)

        assert await rollup_differences(database, world.org_id) == []
