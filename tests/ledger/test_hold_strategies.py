"""The one specification of the hold operation, run against every strategy the backend
has: its quick strategy (SQLite's quick path, PostgreSQL's one statement), which
leaves what it cannot decide to the general path, and the general path alone."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.factories import World
from tests.ledger.helpers import end_period
from tests.ledger_support import balance_of
from tokendesk.db import Database, utcnow
from tokendesk.errors import InsufficientTokens, NotFound
from tokendesk.ledger import service as ledger
from tokendesk.ledger.doctor import check_balances
from tokendesk.ledger.holds import (
    Hold,
    HoldRequest,
    Holds,
    OneStatementHolds,
    SqliteQuickHolds,
    quick_holds_for,
)
from tokendesk.ledger.models import EntryKind, Reservation, ReservationStatus

TTL = 60


def holds_by(strategy: str, database: Database) -> Holds:
    """The hold operation with ``strategy`` first: "quick" is the backend's own."""
    if strategy == "general":
        return Holds(database, ttl_seconds=TTL, quick=None)
    quick = quick_holds_for(database, ttl_seconds=TTL)
    assert isinstance(quick, SqliteQuickHolds if database.is_sqlite else OneStatementHolds)
    return Holds(database, ttl_seconds=TTL, quick=quick)


@pytest.fixture(params=["quick", "general"])
def strategy(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def holds(strategy: str, database: Database) -> Holds:
    return holds_by(strategy, database)


def refusal(remaining: int, needed: int) -> str:
    return (
        f"not enough tokens: {remaining} left, {needed} needed; ask for more with a token request"
    )


async def held_and_reserved(database: Database, user_id: int) -> tuple[list[int], int]:
    """The amounts of the user's open holds, in order, and what the balance reserves;
    the balance agrees with its ledger and its holds."""
    async with database.transaction(write=False) as s:
        amounts = await s.scalars(
            select(Reservation.amount)
            .where(Reservation.user_id == user_id, Reservation.status == ReservationStatus.HELD)
            .order_by(Reservation.id)
        )
        assert await check_balances(s) == []
        held = list(amounts)
    return held, (await balance_of(database, user_id)).reserved


class TestFits:
    async def test_each_call_that_fits_is_held_with_its_own_reservation(
        self, holds: Holds, database: Database, world: World
    ) -> None:
        calls = [(world.nora.id, 1_000), (world.alice.id, 300), (world.nora.id, 1_000)]
        results = await holds.hold([HoldRequest(u, world.org_id, a) for u, a in calls])
        assert all(isinstance(r, Hold) for r in results), results
        taken = [r for r in results if isinstance(r, Hold)]
        assert [t.amount for t in taken] == [a for _, a in calls]
        async with database.transaction(write=False) as s:
            rows = {r.id: r for r in await s.scalars(select(Reservation))}
        assert [(rows[t.id].user_id, rows[t.id].amount) for t in taken] == calls
        assert {(r.organization_id, r.status) for r in rows.values()} == {
            (world.org_id, ReservationStatus.HELD.value)
        }
        assert all(r.expires_at - r.created_at == timedelta(seconds=TTL) for r in rows.values())
        assert await held_and_reserved(database, world.nora.id) == ([1_000, 1_000], 2_000)
        assert await held_and_reserved(database, world.alice.id) == ([300], 300)

    async def test_the_whole_remaining_balance_can_be_held(
        self, holds: Holds, database: Database, world: World
    ) -> None:
        [result] = await holds.hold([HoldRequest(world.nora.id, world.org_id, 5_000)])
        assert isinstance(result, Hold) and result.amount == 5_000
        assert (await balance_of(database, world.nora.id)).remaining == 0


class TestWhatTheHoldLeaves:
    async def test_a_hold_reports_the_balance_it_leaves_and_when_the_period_ends(
        self, holds: Holds, database: Database, world: World
    ) -> None:
        async with database.transaction() as s:
            await ledger.credit(
                s,
                user_id=world.nora.id,
                kind=EntryKind.ADJUSTMENT,
                amount=500,
                actor_id=None,
                reason="extra",
            )
        [result] = await holds.hold([HoldRequest(world.nora.id, world.org_id, 1_200)])
        balance = await balance_of(database, world.nora.id)
        assert isinstance(result, Hold)
        assert (result.remaining, result.given) == (4_300, 5_500)
        assert result.remaining == balance.remaining
        assert result.resets_at == balance.period_end
        assert result.resets_at.utcoffset() == timedelta(0)

    async def test_a_shrunk_hold_leaves_nothing(
        self, holds: Holds, database: Database, world: World
    ) -> None:
        await holds.hold([HoldRequest(world.nora.id, world.org_id, 4_000)])
        [result] = await holds.hold([HoldRequest(world.nora.id, world.org_id, 2_000, at_least=1)])
        assert isinstance(result, Hold)
        assert (result.amount, result.remaining, result.given) == (1_000, 0, 5_000)

    async def test_calls_held_together_leave_no_more_than_each_call_would_alone(
        self, holds: Holds, database: Database, world: World
    ) -> None:
        results = await holds.hold([HoldRequest(world.nora.id, world.org_id, 1_000)] * 3)
        taken = [r for r in results if isinstance(r, Hold)]
        assert len(taken) == 3
        # Held one after another or as one total, the last figure is the balance's.
        assert all(r.remaining <= 4_000 for r in taken)
        assert min(r.remaining for r in taken) == 2_000

    async def test_a_hold_in_a_new_period_reports_that_period_s_end(
        self, holds: Holds, database: Database, world: World
    ) -> None:
        await end_period(database, world.nora.id, used=5_000)
        [result] = await holds.hold([HoldRequest(world.nora.id, world.org_id, 4_000)])
        balance = await balance_of(database, world.nora.id)
        assert isinstance(result, Hold) and result.remaining == 1_000
        assert result.resets_at == balance.period_end > utcnow()


class TestDoesNotFit:
    async def test_calls_beyond_the_balance_are_refused_saying_what_is_left(
        self, holds: Holds, database: Database, world: World
    ) -> None:
        await holds.hold([HoldRequest(world.nora.id, world.org_id, 4_950)])
        calls = [HoldRequest(world.nora.id, world.org_id, 100)] * 2
        calls += [HoldRequest(world.nora.id, world.org_id, 200, at_least=60)]
        results = await holds.hold(calls)
        assert all(isinstance(r, InsufficientTokens) for r in results), results
        refused = [r for r in results if isinstance(r, InsufficientTokens)]
        assert [r.message for r in refused] == 2 * [refusal(50, 100)] + [refusal(50, 60)]
        # What nora's call in flight holds may come back: waiting can help.
        assert [r.could_wait for r in refused] == [True] * 3
        assert await held_and_reserved(database, world.nora.id) == ([4_950], 4_950)

    async def test_a_call_beyond_a_spent_balance_cannot_wait(
        self, holds: Holds, database: Database, world: World
    ) -> None:
        async with database.transaction() as s:
            await ledger.credit(
                s,
                user_id=world.nora.id,
                kind=EntryKind.ADJUSTMENT,
                amount=-5_100,
                actor_id=None,
                reason="overspent",
            )
        [result] = await holds.hold([HoldRequest(world.nora.id, world.org_id, 100)])
        assert isinstance(result, InsufficientTokens)
        assert (result.message, result.could_wait) == (refusal(0, 100), False)
        assert await held_and_reserved(database, world.nora.id) == ([], 0)


class TestShrinkingHolds:
    async def test_a_hold_shrinks_to_what_is_left(
        self, holds: Holds, database: Database, world: World
    ) -> None:
        call = HoldRequest(world.nora.id, world.org_id, 4_000, at_least=100)
        [first] = await holds.hold([call])
        [second] = await holds.hold([call])
        assert isinstance(first, Hold) and isinstance(second, Hold)
        assert (first.amount, second.amount) == (4_000, 1_000)
        assert await held_and_reserved(database, world.nora.id) == ([4_000, 1_000], 5_000)

    async def test_shrinking_holds_in_one_batch_share_what_is_left_down_to_the_floor(
        self, holds: Holds, database: Database, world: World
    ) -> None:
        results = await holds.hold(
            [HoldRequest(world.nora.id, world.org_id, 1_500, at_least=300)] * 6
        )
        assert sorted(r.amount for r in results if isinstance(r, Hold)) == [500] + [1_500] * 3
        refused = [r for r in results if isinstance(r, InsufficientTokens)]
        assert [r.message for r in refused] == 2 * [refusal(0, 300)]
        assert await held_and_reserved(database, world.nora.id) == ([1_500] * 3 + [500], 5_000)

    async def test_a_hold_below_its_floor_is_refused_naming_the_floor(
        self, holds: Holds, database: Database, world: World
    ) -> None:
        await holds.hold([HoldRequest(world.nora.id, world.org_id, 4_950)])
        [result] = await holds.hold([HoldRequest(world.nora.id, world.org_id, 4_000, at_least=64)])
        assert isinstance(result, InsufficientTokens)
        assert (result.message, result.could_wait) == (refusal(50, 64), True)
        assert await held_and_reserved(database, world.nora.id) == ([4_950], 4_950)


class TestEndedPeriod:
    async def test_a_hold_after_the_period_ended_is_taken_in_the_new_period(
        self, holds: Holds, database: Database, world: World
    ) -> None:
        start = await end_period(database, world.nora.id, used=5_000)
        [result] = await holds.hold([HoldRequest(world.nora.id, world.org_id, 4_000)])
        assert isinstance(result, Hold) and result.amount == 4_000
        balance = await balance_of(database, world.nora.id)
        assert (balance.period_start, balance.used, balance.reserved) == (start, 0, 4_000)
        assert await held_and_reserved(database, world.nora.id) == ([4_000], 4_000)


class TestUnknownBalance:
    async def test_a_user_without_a_balance_is_not_found_and_the_others_are_held(
        self, holds: Holds, database: Database, world: World
    ) -> None:
        missing = world.nora.id + 10_000
        results = await holds.hold(
            [
                HoldRequest(missing, world.org_id, 100),
                HoldRequest(world.alice.id, world.org_id, 100),
            ]
        )
        assert isinstance(results[0], NotFound), results
        assert f"user {missing} has no balance" in results[0].message
        assert isinstance(results[1], Hold) and results[1].amount == 100
        assert await held_and_reserved(database, world.alice.id) == ([100], 100)


class TestConcurrency:
    @pytest.mark.parametrize("at_least", [None, 300])
    async def test_processes_holding_at_once_never_overspend(
        self, strategy: str, database: Database, world: World, at_least: int | None
    ) -> None:
        # Four processes' worth of hold operations, each with its own connections, each
        # holding batches of four calls of 1,500 against nora's 5,000 at the same time.
        databases = [Database(database.url) for _ in range(4)]
        try:
            operations = [holds_by(strategy, db) for db in databases]
            call = HoldRequest(world.nora.id, world.org_id, 1_500, at_least=at_least)
            batches = await asyncio.wait_for(
                asyncio.gather(*(op.hold([call] * 4) for op in operations for _ in range(2))),
                30,
            )
        finally:
            for db in databases:
                await db.dispose()
        results = [r for batch in batches for r in batch]
        assert all(isinstance(r, Hold | InsufficientTokens) for r in results), results
        taken = sorted(r.amount for r in results if isinstance(r, Hold))
        assert taken == ([] if at_least is None else [500]) + [1_500] * 3, results
        amounts, reserved = await held_and_reserved(database, world.nora.id)
        assert (sorted(amounts), reserved) == (taken, sum(taken))
