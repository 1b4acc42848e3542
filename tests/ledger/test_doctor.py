from __future__ import annotations

import pytest
from sqlalchemy import update

from tests.factories import World
from tests.ledger.helpers import assert_ledger_consistent
from tokendesk.db import Database
from tokendesk.ledger import service as ledger
from tokendesk.ledger.doctor import Mismatch, check_balances
from tokendesk.ledger.models import Balance, EntryKind


async def tamper(database: Database, user_id: int, column: str, delta: int) -> None:
    """Change a cached balance behind the ledger's back."""
    async with database.transaction() as s:
        await s.execute(
            update(Balance)
            .where(Balance.user_id == user_id)
            .values({column: getattr(Balance, column) + delta})
        )


class TestCheckBalances:
    async def test_a_fresh_organization_matches_its_ledger(
        self, database: Database, world: World
    ) -> None:
        await assert_ledger_consistent(database)

    @pytest.mark.parametrize("column", ["allocation", "granted", "adjusted", "used", "reserved"])
    async def test_a_tampered_balance_column_is_reported(
        self, database: Database, world: World, column: str
    ) -> None:
        async with database.transaction() as s:
            await ledger.credit(
                s,
                user_id=world.alice.id,
                kind=EntryKind.GRANT,
                amount=1_000,
                actor_id=world.admin.id,
                reason="approved",
            )
            await ledger.reserve(s, user_id=world.alice.id, amount=300)
        expected = {"allocation": 50_000, "granted": 1_000, "adjusted": 0, "used": 0}
        expected["reserved"] = 300

        await tamper(database, world.alice.id, column, 7)

        async with database.transaction(write=False) as s:
            mismatches = await check_balances(s)
        ledger_value = expected[column]
        assert mismatches == [Mismatch(world.alice.id, column, ledger_value + 7, ledger_value)]

    async def test_every_tampered_user_is_reported(self, database: Database, world: World) -> None:
        await tamper(database, world.bob.id, "used", -50)
        await tamper(database, world.oscar.id, "allocation", 1)

        async with database.transaction(write=False) as s:
            mismatches = await check_balances(s)

        assert {(m.user_id, m.column) for m in mismatches} == {
            (world.bob.id, "used"),
            (world.oscar.id, "allocation"),
        }
