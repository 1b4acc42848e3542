"""The gateway's hold batcher and background settler, without HTTP."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from sqlalchemy import select

from tests.factories import World
from tokendesk.db import Database
from tokendesk.ledger import service as ledger
from tokendesk.ledger.doctor import check_balances
from tokendesk.metering.holds import HoldBatcher, Settlement, Settler
from tokendesk.metering.models import UsageEvent
from tokendesk.metering.service import UsageInput


def usage(event_id: str, user_id: int, tokens: int) -> UsageInput:
    return UsageInput(
        event_id=event_id,
        user_id=user_id,
        model="fast",
        prompt_tokens=tokens,
        completion_tokens=0,
        total_tokens=tokens,
        occurred_at=datetime.now(UTC),
        source="gateway",
    )


async def hold(database: Database, world: World, user_id: int, amount: int) -> int:
    return await HoldBatcher(database, ttl_seconds=60).hold(
        user_id=user_id, organization_id=world.org_id, amount=amount
    )


class TestSettler:
    async def test_settlements_submitted_together_share_one_transaction(
        self, database: Database, world: World
    ) -> None:
        people = [world.alice, world.bob, world.amy]
        holds = [await hold(database, world, p.id, 100) for p in people]
        settler = Settler(database, linger_seconds=0.05)
        for n, (person, hold_id) in enumerate(zip(people, holds, strict=True)):
            settler.submit(Settlement(hold_id, world.org_id, usage(f"together-{n}", person.id, 30)))
        await settler.stop()
        async with database.transaction(write=False) as s:
            recorded = set((await s.scalars(select(UsageEvent.recorded_at))).all())
            assert len(recorded) == 1
            for person in people:
                balance = await ledger.get_balance(s, user_id=person.id)
                assert (balance.used, balance.reserved) == (30, 0)
            assert await check_balances(s) == []

    async def test_a_lone_settlement_is_committed_once_the_linger_has_passed(
        self, database: Database, world: World
    ) -> None:
        hold_id = await hold(database, world, world.alice.id, 100)
        settler = Settler(database, linger_seconds=0.05)
        started = time.monotonic()
        settler.submit(Settlement(hold_id, world.org_id, usage("lone", world.alice.id, 30)))
        await asyncio.wait_for(settler.drain(), 5)
        assert time.monotonic() - started >= 0.05
        await settler.stop()

    async def test_one_bad_settlement_does_not_lose_the_others(
        self, database: Database, world: World
    ) -> None:
        good = await hold(database, world, world.alice.id, 100)
        settler = Settler(database, linger_seconds=0.05)
        settler.submit(Settlement(good, world.org_id, usage("good", world.alice.id, 30)))
        # oscar belongs to the other organization: recording his usage here is refused.
        settler.submit(Settlement(good + 1000, world.org_id, usage("bad", world.oscar.id, 30)))
        await settler.stop()
        async with database.transaction(write=False) as s:
            balance = await ledger.get_balance(s, user_id=world.alice.id)
            assert (balance.used, balance.reserved) == (30, 0)
            assert await check_balances(s) == []
