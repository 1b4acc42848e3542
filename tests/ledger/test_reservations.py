from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.factories import World, snapshot
from tests.ledger.helpers import assert_ledger_consistent
from tests.ledger_support import balance_of
from tokendesk.db import Database
from tokendesk.errors import InsufficientTokens, InvalidInput, NotFound
from tokendesk.ledger import service as ledger
from tokendesk.ledger.models import Reservation, ReservationStatus


async def hold(database: Database, user_id: int, amount: int, **kw: object) -> Reservation:
    async with database.transaction() as s:
        return await ledger.reserve(s, user_id=user_id, amount=amount, **kw)  # type: ignore[arg-type]


async def reservation(database: Database, reservation_id: int) -> Reservation:
    async with database.transaction(write=False) as s:
        found = await s.get(Reservation, reservation_id)
        assert found is not None
        return found


class TestReserve:
    async def test_a_hold_lowers_remaining_until_it_is_closed(
        self, database: Database, world: World
    ) -> None:
        now = datetime.now(UTC)

        held = await hold(database, world.alice.id, 12_000, ttl_seconds=90, now=now)

        balance = await balance_of(database, world.alice.id)
        assert (balance.reserved, balance.remaining) == (12_000, 38_000)
        assert (held.status, held.amount) == (ReservationStatus.HELD.value, 12_000)
        assert held.expires_at == now + timedelta(seconds=90)
        await assert_ledger_consistent(database)

    async def test_the_whole_remaining_balance_can_be_held(
        self, database: Database, world: World
    ) -> None:
        await hold(database, world.nora.id, 5_000)

        assert (await balance_of(database, world.nora.id)).remaining == 0

    async def test_more_than_remains_is_refused_with_402_naming_what_is_left(
        self, database: Database, world: World
    ) -> None:
        await hold(database, world.nora.id, 3_500)
        before = await snapshot(database)

        with pytest.raises(InsufficientTokens) as refused:
            await hold(database, world.nora.id, 1_501)

        assert refused.value.status_code == 402
        assert "1500 left" in refused.value.message
        assert "1501 needed" in refused.value.message
        assert "token request" in refused.value.message
        assert await snapshot(database) == before

    async def test_an_overspent_balance_reports_nothing_left(
        self, database: Database, world: World
    ) -> None:
        from tokendesk.metering.service import UsageInput, record_usage

        async with database.transaction() as s:
            await record_usage(
                s,
                organization_id=world.org_id,
                events=[UsageInput("big", world.nora.id, "gpt-4o", 6_000, 0)],
            )

        with pytest.raises(InsufficientTokens) as refused:
            await hold(database, world.nora.id, 1)

        assert "0 left" in refused.value.message

    async def test_a_hold_with_a_floor_takes_what_remains_up_to_its_amount(
        self, database: Database, world: World
    ) -> None:
        await hold(database, world.nora.id, 3_500)

        held = await hold(database, world.nora.id, 4_000, at_least=64)

        assert held.amount == 1_500
        assert (await balance_of(database, world.nora.id)).remaining == 0
        await assert_ledger_consistent(database)

    async def test_a_hold_with_a_floor_is_refused_below_it_naming_the_floor(
        self, database: Database, world: World
    ) -> None:
        await hold(database, world.nora.id, 4_950)
        before = await snapshot(database)

        with pytest.raises(InsufficientTokens) as refused:
            await hold(database, world.nora.id, 4_000, at_least=64)

        assert "50 left, 64 needed" in refused.value.message
        assert refused.value.could_wait  # the 4,950 held may come back
        assert await snapshot(database) == before

    @pytest.mark.parametrize("amount", [0, -100, 2**63])
    async def test_a_hold_must_be_positive_and_fit_a_balance(
        self, database: Database, world: World, amount: int
    ) -> None:
        before = await snapshot(database)

        with pytest.raises(InvalidInput) as refused:
            await hold(database, world.alice.id, amount)

        assert refused.value.field == "amount"
        assert await snapshot(database) == before

    async def test_unknown_user_is_not_found(self, database: Database, world: World) -> None:
        with pytest.raises(NotFound):
            await hold(database, 10**9, 10)


class TestReleaseAndSettle:
    async def test_release_returns_the_hold(self, database: Database, world: World) -> None:
        held = await hold(database, world.alice.id, 4_000)

        async with database.transaction() as s:
            released = await ledger.release(s, reservation_id=held.id)

        assert released.status == ReservationStatus.RELEASED.value
        assert (await balance_of(database, world.alice.id)).remaining == 50_000
        await assert_ledger_consistent(database)

    async def test_settle_returns_the_hold_and_keeps_the_actual_amount(
        self, database: Database, world: World
    ) -> None:
        held = await hold(database, world.alice.id, 4_000)

        async with database.transaction() as s:
            settled = await ledger.settle(s, reservation_id=held.id, actual=1_234)

        assert (settled.status, settled.settled_amount) == (ReservationStatus.SETTLED.value, 1_234)
        balance = await balance_of(database, world.alice.id)
        assert (balance.reserved, balance.remaining) == (0, 50_000)
        await assert_ledger_consistent(database)

    @pytest.mark.parametrize(
        ("first", "second"),
        [
            ("release", "release"),
            ("settle", "settle"),
            ("release", "settle"),
            ("settle", "release"),
        ],
    )
    async def test_closing_a_hold_twice_returns_it_once(
        self, database: Database, world: World, first: str, second: str
    ) -> None:
        other = await hold(database, world.alice.id, 1_000)
        held = await hold(database, world.alice.id, 4_000)

        for action in (first, second):
            async with database.transaction() as s:
                if action == "release":
                    await ledger.release(s, reservation_id=held.id)
                else:
                    await ledger.settle(s, reservation_id=held.id, actual=900)

        assert (await reservation(database, held.id)).status == (
            ReservationStatus.RELEASED.value
            if first == "release"
            else ReservationStatus.SETTLED.value
        )
        assert (await balance_of(database, world.alice.id)).reserved == other.amount
        await assert_ledger_consistent(database)

    async def test_closing_an_unknown_hold_is_not_found(
        self, database: Database, world: World
    ) -> None:
        with pytest.raises(NotFound):
            async with database.transaction() as s:
                await ledger.release(s, reservation_id=10**9)


class TestExpireHolds:
    async def test_only_holds_past_their_expiry_are_released(
        self, database: Database, world: World
    ) -> None:
        now = datetime.now(UTC)
        short = await hold(database, world.alice.id, 1_000, ttl_seconds=30, now=now)
        long = await hold(database, world.alice.id, 2_000, ttl_seconds=600, now=now)
        bobs = await hold(database, world.bob.id, 3_000, ttl_seconds=30, now=now)

        async with database.transaction() as s:
            expired = await ledger.expire_holds(s, now=now + timedelta(seconds=30))

        assert expired == 2
        assert (await reservation(database, short.id)).status == ReservationStatus.EXPIRED.value
        assert (await reservation(database, bobs.id)).status == ReservationStatus.EXPIRED.value
        assert (await reservation(database, long.id)).status == ReservationStatus.HELD.value
        assert (await balance_of(database, world.alice.id)).reserved == 2_000
        assert (await balance_of(database, world.bob.id)).reserved == 0
        await assert_ledger_consistent(database)

    async def test_closed_holds_are_left_alone(self, database: Database, world: World) -> None:
        now = datetime.now(UTC)
        held = await hold(database, world.alice.id, 1_000, ttl_seconds=30, now=now)
        async with database.transaction() as s:
            await ledger.settle(s, reservation_id=held.id, actual=10)

        async with database.transaction() as s:
            assert await ledger.expire_holds(s, now=now + timedelta(hours=1)) == 0

        assert (await reservation(database, held.id)).status == ReservationStatus.SETTLED.value
        await assert_ledger_consistent(database)
