"""Usage batches reported together share a transaction, and answer as if recorded in turn."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from tests.factories import World
from tests.ledger_support import balance_of
from tests.metering.helpers import assert_ledger_consistent, usage
from tokendesk.db import Database
from tokendesk.errors import InvalidInput
from tokendesk.metering.ingest import UsageRecorder
from tokendesk.metering.models import UsageEvent


async def recorded_at(database: Database) -> set[object]:
    async with database.transaction(write=False) as s:
        return set((await s.scalars(select(UsageEvent.recorded_at))).all())


class TestUsageRecorder:
    async def test_batches_arriving_together_share_one_transaction(
        self, database: Database, world: World
    ) -> None:
        recorder = UsageRecorder(database)
        people = [world.alice, world.bob, world.amy]
        answers = await asyncio.gather(
            *(
                recorder.record(
                    organization_id=world.org_id,
                    events=[usage(f"{p.name}-{n}", p.id, 100) for n in range(3)],
                )
                for p in people
            )
        )
        # All three were waiting when the recorder's task first ran: one transaction.
        assert len(await recorded_at(database)) == 1
        for person, answer in zip(people, answers, strict=True):
            assert [r.event_id for r in answer] == [f"{person.name}-{n}" for n in range(3)]
            assert {r.user_id for r in answer} == {person.id}
            assert not any(r.replayed for r in answer)
            assert (await balance_of(database, person.id)).used == 300
        await assert_ledger_consistent(database)

    async def test_an_event_in_two_waiting_batches_is_charged_for_the_first(
        self, database: Database, world: World
    ) -> None:
        recorder = UsageRecorder(database)
        _, second, third = await asyncio.gather(
            recorder.record(organization_id=world.org_id, events=[usage("warm", world.bob.id)]),
            recorder.record(
                organization_id=world.org_id, events=[usage("shared", world.alice.id, 500)]
            ),
            recorder.record(
                organization_id=world.org_id,
                events=[usage("shared", world.alice.id, 500), usage("own", world.alice.id, 50)],
            ),
        )
        assert len(await recorded_at(database)) == 1  # all three in one transaction
        assert [r.replayed for r in second] == [False]
        assert [(r.event_id, r.replayed) for r in third] == [("shared", True), ("own", False)]
        assert third[0].remaining == second[0].remaining
        assert third[1].remaining == second[0].remaining - 50
        assert (await balance_of(database, world.alice.id)).used == 550
        await assert_ledger_consistent(database)

    async def test_a_bad_batch_fails_alone_and_names_its_own_event(
        self, database: Database, world: World
    ) -> None:
        recorder = UsageRecorder(database)
        # oscar belongs to the other organization.
        outcomes = await asyncio.gather(
            recorder.record(organization_id=world.org_id, events=[usage("a0", world.alice.id)]),
            recorder.record(organization_id=world.org_id, events=[usage("b0", world.bob.id)]),
            recorder.record(
                organization_id=world.org_id,
                events=[usage("n0", world.nora.id), usage("o1", world.oscar.id)],
            ),
            recorder.record(organization_id=world.org_id, events=[usage("y0", world.amy.id)]),
            return_exceptions=True,
        )
        bad = outcomes[2]
        assert isinstance(bad, InvalidInput)
        assert bad.field == "events.1.user_id"
        for person, outcome in zip(
            [world.alice, world.bob, world.amy],
            [outcomes[0], outcomes[1], outcomes[3]],
            strict=True,
        ):
            assert not isinstance(outcome, BaseException)
            assert (await balance_of(database, person.id)).used == 100
        # Nothing of the bad batch was written, not even its good event.
        assert (await balance_of(database, world.nora.id)).used == 0
        await assert_ledger_consistent(database)

    async def test_batches_of_two_organizations_are_each_recorded_in_their_own(
        self, database: Database, world: World
    ) -> None:
        recorder = UsageRecorder(database)
        await asyncio.gather(
            recorder.record(organization_id=world.org_id, events=[usage("x", world.bob.id)]),
            recorder.record(organization_id=world.org_id, events=[usage("same", world.alice.id)]),
            recorder.record(
                organization_id=world.other_org_id, events=[usage("same", world.oscar.id)]
            ),
        )
        # Event ids are unique per organization: the same id is new in each.
        assert (await balance_of(database, world.alice.id)).used == 100
        assert (await balance_of(database, world.oscar.id)).used == 100
        async with database.transaction(write=False) as s:
            orgs = await s.scalars(
                select(UsageEvent.organization_id).where(UsageEvent.event_id == "same")
            )
            assert sorted(orgs) == sorted([world.org_id, world.other_org_id])

    async def test_a_caller_going_away_does_not_stop_the_others(
        self, database: Database, world: World
    ) -> None:
        recorder = UsageRecorder(database)
        first = asyncio.create_task(
            recorder.record(organization_id=world.org_id, events=[usage("f", world.bob.id)])
        )
        await asyncio.sleep(0)
        leaving = asyncio.create_task(
            recorder.record(organization_id=world.org_id, events=[usage("l", world.alice.id)])
        )
        staying = asyncio.create_task(
            recorder.record(organization_id=world.org_id, events=[usage("s", world.amy.id)])
        )
        await asyncio.sleep(0)
        leaving.cancel()
        await first
        assert [r.event_id for r in await staying] == ["s"]
        with pytest.raises(asyncio.CancelledError):
            await leaving
        # What the caller sent was recorded all the same: it had been handed over.
        assert (await balance_of(database, world.alice.id)).used == 100
