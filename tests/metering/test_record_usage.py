from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from tests.factories import World, snapshot
from tests.ledger_support import balance_of
from tests.metering.helpers import assert_ledger_consistent, usage, usage_entries
from tokendesk.db import Database
from tokendesk.errors import InvalidInput
from tokendesk.events.bus import InProcessBus
from tokendesk.metering.models import UsageEvent
from tokendesk.metering.service import UsageInput, record_usage


async def record(database: Database, world: World, *events: UsageInput, **kw: object):  # type: ignore[no-untyped-def]
    async with database.transaction() as s:
        return await record_usage(s, organization_id=world.org_id, events=events, **kw)  # type: ignore[arg-type]


class TestRecordUsage:
    async def test_event_debits_the_balance_with_one_usage_ledger_entry(
        self, database: Database, world: World
    ) -> None:
        [result] = await record(database, world, usage("e1", world.alice.id, 1_000))

        assert (result.total_tokens, result.remaining, result.replayed) == (1_000, 49_000, False)
        assert (await balance_of(database, world.alice.id)).used == 1_000
        assert await usage_entries(database, world.alice.id) == [-1_000]
        await assert_ledger_consistent(database)

    async def test_total_tokens_given_by_the_caller_is_what_is_debited(
        self, database: Database, world: World
    ) -> None:
        [result] = await record(database, world, usage("e1", world.alice.id, 100, total_tokens=250))

        assert (result.total_tokens, result.remaining) == (250, 49_750)
        assert await usage_entries(database, world.alice.id) == [-250]

    async def test_events_of_one_user_are_charged_in_batch_order(
        self, database: Database, world: World
    ) -> None:
        results = await record(
            database,
            world,
            usage("a1", world.alice.id, 100),
            usage("b1", world.bob.id, 10),
            usage("a2", world.alice.id, 200),
            usage("a3", world.alice.id, 300),
        )

        assert [r.remaining for r in results] == [49_900, 99_990, 49_700, 49_400]
        assert (await balance_of(database, world.alice.id)).used == 600
        await assert_ledger_consistent(database)

    async def test_remaining_accounts_for_held_reservations(
        self, database: Database, world: World
    ) -> None:
        from tokendesk.ledger import service as ledger

        async with database.transaction() as s:
            await ledger.reserve(s, user_id=world.alice.id, amount=10_000)

        [result] = await record(database, world, usage("e1", world.alice.id, 1_000))

        assert result.remaining == 39_000

    async def test_usage_beyond_the_balance_is_recorded_and_shows_a_negative_remaining(
        self, database: Database, world: World
    ) -> None:
        results = await record(
            database, world, usage("n1", world.nora.id, 4_000), usage("n2", world.nora.id, 3_000)
        )

        assert [r.remaining for r in results] == [1_000, -2_000]
        balance = await balance_of(database, world.nora.id)
        assert (balance.used, balance.remaining) == (7_000, -2_000)
        await assert_ledger_consistent(database)

    async def test_empty_batch_writes_nothing(self, database: Database, world: World) -> None:
        before = await snapshot(database)

        assert await record(database, world) == []
        assert await snapshot(database) == before

    async def test_occurred_at_defaults_to_now(self, database: Database, world: World) -> None:
        now = datetime(2030, 5, 17, 12, 0, tzinfo=UTC)

        await record(database, world, usage("e1", world.alice.id), now=now)

        async with database.transaction(write=False) as s:
            event = await s.scalar(select(UsageEvent))
        assert event is not None
        assert (event.occurred_at, event.recorded_at) == (now, now)

    async def test_each_affected_user_gets_one_balance_event_after_commit(
        self, database: Database, world: World, bus: InProcessBus
    ) -> None:
        async with bus.subscribe() as queue:
            async with database.transaction() as s:
                await record_usage(
                    s,
                    organization_id=world.org_id,
                    events=[
                        usage("a1", world.alice.id, 100),
                        usage("a2", world.alice.id, 200),
                        usage("b1", world.bob.id, 50),
                    ],
                )
                assert queue.empty()
            events = [queue.get_nowait() for _ in range(queue.qsize())]

        by_user = {e.user_id: e.data for e in events if e.type == "balance.changed"}
        assert len(events) == 2
        assert by_user[world.alice.id]["remaining"] == 49_700
        assert by_user[world.alice.id]["cause"] == "usage"
        assert by_user[world.bob.id]["used"] == 50

    async def test_a_batch_takes_a_fixed_number_of_statements(
        self, database: Database, world: World
    ) -> None:
        from sqlalchemy import event

        statements: list[str] = []

        def count(*args: object) -> None:
            statements.append(str(args[2]))

        users = [world.alice.id, world.amy.id, world.bob.id, world.nora.id, world.owner.id]
        batch = [usage(f"e{i}", users[i % len(users)], 10 + i) for i in range(300)]
        engine = database.write_engine.sync_engine
        event.listen(engine, "before_cursor_execute", count)
        try:
            await record(database, world, *batch)
        finally:
            event.remove(engine, "before_cursor_execute", count)

        # balances, events, ledger, used (+ BEGIN); rollups: events read back, per user,
        # team and model day, series (created on first use), running totals; Nora crosses
        # her thresholds: the alerts recorded, opt-outs read, the emails queued.
        assert len(statements) <= 15, statements
        assert sum("notification" in s and "JOIN" not in s for s in statements) == 3
        async with database.transaction(write=False) as s:
            assert await s.scalar(select(func.count()).select_from(UsageEvent)) == 300
        await assert_ledger_consistent(database)


class TestReplays:
    async def test_same_event_id_twice_in_one_batch_charges_once(
        self, database: Database, world: World
    ) -> None:
        first, again = await record(
            database, world, usage("dup", world.alice.id, 500), usage("dup", world.alice.id, 500)
        )

        assert (first.replayed, again.replayed) == (False, True)
        assert (again.usage_event_id, again.remaining) == (first.usage_event_id, 49_500)
        assert await usage_entries(database, world.alice.id) == [-500]
        await assert_ledger_consistent(database)

    async def test_a_later_duplicate_in_the_batch_replays_the_first_even_if_it_differs(
        self, database: Database, world: World
    ) -> None:
        first, again = await record(
            database, world, usage("dup", world.alice.id, 500), usage("dup", world.bob.id, 9)
        )

        assert again == type(first)(**{**first.__dict__, "replayed": True})
        assert (await balance_of(database, world.bob.id)).used == 0

    async def test_same_event_id_in_a_later_batch_returns_the_first_result(
        self, database: Database, world: World
    ) -> None:
        [first] = await record(database, world, usage("e1", world.alice.id, 700))
        await record(database, world, usage("e2", world.alice.id, 300))
        before = await snapshot(database)

        [again] = await record(database, world, usage("e1", world.alice.id, 700))

        assert again.replayed is True
        assert (again.usage_event_id, again.total_tokens, again.remaining) == (
            first.usage_event_id,
            700,
            49_300,
        )
        assert await snapshot(database) == before

    async def test_replays_mixed_with_new_events_charge_only_the_new_ones(
        self, database: Database, world: World
    ) -> None:
        await record(database, world, usage("old", world.alice.id, 1_000))

        results = await record(
            database,
            world,
            usage("old", world.alice.id, 1_000),
            usage("new", world.alice.id, 10),
        )

        assert [(r.replayed, r.remaining) for r in results] == [(True, 49_000), (False, 48_990)]
        assert await usage_entries(database, world.alice.id) == [-1_000, -10]
        [again] = await record(database, world, usage("new", world.alice.id, 10))
        assert (again.replayed, again.remaining) == (True, 48_990)
        await assert_ledger_consistent(database)

    async def test_event_ids_are_unique_per_organization_not_globally(
        self, database: Database, world: World
    ) -> None:
        await record(database, world, usage("shared", world.alice.id, 10))

        async with database.transaction() as s:
            [other] = await record_usage(
                s, organization_id=world.other_org_id, events=[usage("shared", world.oscar.id, 10)]
            )

        assert other.replayed is False
        assert (await balance_of(database, world.oscar.id)).used == 10


class TestPeriods:
    async def test_usage_after_the_period_ended_is_charged_to_the_new_period(
        self, database: Database, world: World
    ) -> None:
        await record(database, world, usage("old", world.alice.id, 5_000))
        ended = (await balance_of(database, world.alice.id)).period_end
        later = ended + timedelta(hours=1)

        [result] = await record(database, world, usage("new", world.alice.id, 100), now=later)

        balance = await balance_of(database, world.alice.id)
        assert (result.remaining, balance.used, balance.period_start) == (49_900, 100, ended)
        await assert_ledger_consistent(database)


class TestValidation:
    @pytest.mark.parametrize(
        ("change", "field"),
        [
            ({"event_id": ""}, "event_id"),
            ({"event_id": "x" * 201}, "event_id"),
            ({"model": ""}, "model"),
            ({"model": "m" * 201}, "model"),
            ({"source": ""}, "source"),
            ({"prompt_tokens": -1}, "prompt_tokens"),
            ({"completion_tokens": -5}, "completion_tokens"),
            ({"prompt_tokens": 1.5}, "prompt_tokens"),
            ({"prompt_tokens": True}, "prompt_tokens"),
            ({"total_tokens": -1}, "total_tokens"),
            ({"occurred_at": datetime(2030, 1, 1)}, "occurred_at"),
            # A callable: resolved when the test runs, not when the suite is collected.
            ({"occurred_at": lambda: datetime.now(UTC) + timedelta(minutes=6)}, "occurred_at"),
            ({"user_id": 10**9}, "user_id"),
        ],
    )
    async def test_bad_event_is_refused_naming_its_field_and_nothing_is_written(
        self, database: Database, world: World, change: dict[str, object], field: str
    ) -> None:
        good = usage("ok", world.alice.id, 10)
        change = {k: v() if callable(v) else v for k, v in change.items()}
        bad = UsageInput(**{**usage("bad", world.alice.id, 10).__dict__, **change})
        before = await snapshot(database)

        with pytest.raises(InvalidInput) as refused:
            await record(database, world, good, bad)

        assert refused.value.field == f"events.1.{field}"
        assert refused.value.message.startswith(f"events.1.{field}: ")
        assert await snapshot(database) == before

    async def test_occurred_at_a_little_ahead_of_our_clock_is_accepted(
        self, database: Database, world: World
    ) -> None:
        ahead = datetime.now(UTC) + timedelta(minutes=4)

        [result] = await record(database, world, usage("e1", world.alice.id, occurred_at=ahead))

        assert result.replayed is False

    async def test_user_of_another_organization_is_refused(
        self, database: Database, world: World
    ) -> None:
        before = await snapshot(database)

        with pytest.raises(InvalidInput) as refused:
            await record(database, world, usage("a", world.alice.id), usage("o", world.oscar.id))

        assert refused.value.field == "events.1.user_id"
        assert await snapshot(database) == before
