from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from tests.factories import World
from tests.ledger_support import balance_of
from tests.metering.helpers import (
    assert_ledger_consistent,
    rollups_and_raw_sums,
    usage,
)
from tokendesk.accounts.models import User
from tokendesk.db import Database
from tokendesk.metering.models import UsageTeamDaily
from tokendesk.metering.service import UsageInput, record_usage


async def record(database: Database, world: World, *events: UsageInput, **kw: object) -> None:
    async with database.transaction() as s:
        await record_usage(s, organization_id=world.org_id, events=events, **kw)  # type: ignore[arg-type]


def at(day: int, hour: int = 12) -> datetime:
    return datetime(2030, 3, day, hour, tzinfo=UTC)


class TestDailyRollups:
    async def test_one_row_per_day_team_and_model_with_the_sums_of_its_events(
        self, database: Database, world: World
    ) -> None:
        now = at(20)
        await record(
            database,
            world,
            usage("1", world.alice.id, 100, occurred_at=at(3)),
            usage("2", world.alice.id, 200, occurred_at=at(3, 23)),
            usage("3", world.alice.id, 40, occurred_at=at(3), model="claude"),
            usage("4", world.bob.id, 7, occurred_at=at(4, 0)),
            now=now,
        )

        daily, raw = await rollups_and_raw_sums(database)
        assert daily == raw
        assert daily[(at(3).date(), world.team_a, "gpt-4o")] == (225, 75, 300, 2)
        assert len(daily) == 3

    async def test_replays_add_nothing_to_the_rollups(
        self, database: Database, world: World
    ) -> None:
        first = usage("same", world.alice.id, 100, occurred_at=at(3))
        await record(database, world, first, first, now=at(20))
        await record(database, world, first, usage("other", world.alice.id, 5), now=at(20))

        daily, raw = await rollups_and_raw_sums(database)
        assert daily == raw
        assert daily[(at(3).date(), world.team_a, "gpt-4o")][3] == 1

    async def test_late_events_for_earlier_days_add_to_those_days(
        self, database: Database, world: World
    ) -> None:
        await record(
            database, world, usage("today", world.alice.id, 10, occurred_at=at(9)), now=at(9)
        )
        await record(
            database,
            world,
            usage("late-1", world.alice.id, 20, occurred_at=at(2)),
            usage("late-2", world.alice.id, 30, occurred_at=at(9, 1)),
            usage("late-3", world.alice.id, 40, occurred_at=at(2, 5)),
            now=at(10),
        )

        daily, raw = await rollups_and_raw_sums(database)
        assert daily == raw
        assert daily[(at(2).date(), world.team_a, "gpt-4o")][2:] == (60, 2)
        assert daily[(at(9).date(), world.team_a, "gpt-4o")][2:] == (40, 2)

    async def test_rollups_span_a_period_reset_while_balances_restart(
        self, database: Database, world: World
    ) -> None:
        end = (await balance_of(database, world.alice.id)).period_end
        before_end = end - timedelta(hours=1)
        after_end = end + timedelta(hours=1)
        await record(database, world, usage("old", world.alice.id, 300), now=before_end)

        await record(database, world, usage("new", world.alice.id, 50), now=after_end)

        daily, raw = await rollups_and_raw_sums(database)
        assert daily == raw
        assert sum(row[2] for row in daily.values()) == 350
        assert (await balance_of(database, world.alice.id)).used == 50
        await assert_ledger_consistent(database)

    async def test_rollup_rows_keep_the_team_each_event_was_spent_in(
        self, database: Database, world: World
    ) -> None:
        await record(database, world, usage("1", world.alice.id, occurred_at=at(3)), now=at(20))
        async with database.transaction() as s:
            alice = await s.get(User, world.alice.id)
            assert alice is not None
            alice.team_id = world.team_b

        await record(database, world, usage("2", world.alice.id, occurred_at=at(3)), now=at(20))

        async with database.transaction(write=False) as s:
            teams = list(
                await s.scalars(select(UsageTeamDaily.team_id).order_by(UsageTeamDaily.team_id))
            )
        assert teams == [world.team_a, world.team_b]
