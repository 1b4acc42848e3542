from __future__ import annotations

import pytest

from tests.factories import World, snapshot
from tests.ledger_support import balance_of
from tests.metering.helpers import assert_ledger_consistent, usage, usage_entries
from tokendesk.db import Database
from tokendesk.errors import InvalidInput, NotFound
from tokendesk.ledger import service as ledger
from tokendesk.ledger.models import Reservation, ReservationStatus
from tokendesk.metering.service import settle_and_record


async def hold(database: Database, user_id: int, amount: int) -> int:
    async with database.transaction() as s:
        return (await ledger.reserve(s, user_id=user_id, amount=amount)).id


class TestSettleAndRecord:
    async def test_returns_the_hold_and_debits_the_actual_amount(
        self, database: Database, world: World
    ) -> None:
        reservation_id = await hold(database, world.alice.id, 4_000)

        async with database.transaction() as s:
            result = await settle_and_record(
                s,
                reservation_id=reservation_id,
                usage=usage("chat-1", world.alice.id, 1_500),
                organization_id=world.org_id,
            )

        balance = await balance_of(database, world.alice.id)
        assert (balance.reserved, balance.used, balance.remaining) == (0, 1_500, 48_500)
        assert (result.remaining, result.replayed) == (48_500, False)
        async with database.transaction(write=False) as s:
            reservation = await s.get(Reservation, reservation_id)
        assert reservation is not None
        assert (reservation.status, reservation.settled_amount) == (
            ReservationStatus.SETTLED.value,
            1_500,
        )
        await assert_ledger_consistent(database)

    async def test_settling_more_than_was_held_is_recorded_and_shows_the_overspend(
        self, database: Database, world: World
    ) -> None:
        reservation_id = await hold(database, world.nora.id, 5_000)

        async with database.transaction() as s:
            result = await settle_and_record(
                s,
                reservation_id=reservation_id,
                usage=usage("long-reply", world.nora.id, 6_200),
                organization_id=world.org_id,
            )

        assert result.remaining == -1_200
        balance = await balance_of(database, world.nora.id)
        assert (balance.reserved, balance.used) == (0, 6_200)
        await assert_ledger_consistent(database)

    async def test_a_retry_charges_once_and_replays_the_first_result(
        self, database: Database, world: World
    ) -> None:
        reservation_id = await hold(database, world.alice.id, 2_000)
        results = []
        for _ in range(2):
            async with database.transaction() as s:
                results.append(
                    await settle_and_record(
                        s,
                        reservation_id=reservation_id,
                        usage=usage("chat-1", world.alice.id, 1_000),
                        organization_id=world.org_id,
                    )
                )

        assert [r.replayed for r in results] == [False, True]
        assert results[1].remaining == results[0].remaining == 49_000
        assert await usage_entries(database, world.alice.id) == [-1_000]
        assert (await balance_of(database, world.alice.id)).reserved == 0
        await assert_ledger_consistent(database)

    async def test_usage_after_the_hold_expired_is_still_recorded(
        self, database: Database, world: World
    ) -> None:
        reservation_id = await hold(database, world.alice.id, 2_000)
        async with database.transaction() as s:
            reservation = await s.get(Reservation, reservation_id)
            assert reservation is not None
            assert await ledger.expire_holds(s, now=reservation.expires_at) == 1

        async with database.transaction() as s:
            result = await settle_and_record(
                s,
                reservation_id=reservation_id,
                usage=usage("late", world.alice.id, 700),
                organization_id=world.org_id,
            )

        assert result.remaining == 49_300
        await assert_ledger_consistent(database)

    async def test_reservation_of_another_organization_is_not_found(
        self, database: Database, world: World
    ) -> None:
        reservation_id = await hold(database, world.oscar.id, 100)
        before = await snapshot(database)

        with pytest.raises(NotFound):
            async with database.transaction() as s:
                await settle_and_record(
                    s,
                    reservation_id=reservation_id,
                    usage=usage("x", world.oscar.id, 10),
                    organization_id=world.org_id,
                )

        assert await snapshot(database) == before

    async def test_usage_of_another_user_than_the_hold_is_refused(
        self, database: Database, world: World
    ) -> None:
        reservation_id = await hold(database, world.alice.id, 100)
        before = await snapshot(database)

        with pytest.raises(InvalidInput) as refused:
            async with database.transaction() as s:
                await settle_and_record(
                    s,
                    reservation_id=reservation_id,
                    usage=usage("x", world.bob.id, 10),
                    organization_id=world.org_id,
                )

        assert refused.value.field == "user_id"
        assert await snapshot(database) == before
