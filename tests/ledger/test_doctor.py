from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import insert, update

from tests.factories import World
from tests.ledger.helpers import assert_ledger_consistent
from tokendesk.db import Database, utcnow
from tokendesk.ledger import service as ledger
from tokendesk.ledger.doctor import Mismatch, check_balances, check_references
from tokendesk.ledger.models import Balance, EntryKind, LedgerEntry
from tokendesk.token_requests.models import TokenRequest


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


async def rewrite_entries(database: Database, user_id: int, **values: Any) -> None:
    """Point a user's ledger entries somewhere else behind the services' back."""
    async with database.transaction() as s:
        await s.execute(update(LedgerEntry).where(LedgerEntry.user_id == user_id).values(values))


async def add_request(database: Database, organization_id: int, user_id: int, **values: Any) -> int:
    """A token request written straight to the table, as the services never would."""
    async with database.transaction() as s:
        request_id = await s.scalar(
            insert(TokenRequest)
            .values(
                organization_id=organization_id,
                user_id=user_id,
                amount=10,
                balance_at_request=0,
                created_at=utcnow(),
                **values,
            )
            .returning(TokenRequest.id)
        )
    assert request_id is not None
    return request_id


async def references(database: Database) -> list[str]:
    async with database.transaction(write=False) as s:
        return await check_references(s)


class TestCheckReferences:
    async def test_an_entry_in_another_organization_than_its_user_is_reported(
        self, database: Database, world: World
    ) -> None:
        await rewrite_entries(database, world.alice.id, organization_id=world.other_org_id)
        [problem] = await references(database)
        assert problem.startswith("1 ledger entries name an organization other than their user's")

    async def test_an_entry_whose_actor_is_not_a_user_is_reported(
        self, database: Database, world: World
    ) -> None:
        await rewrite_entries(database, world.alice.id, actor_id=999_999)
        [problem] = await references(database)
        assert problem.startswith("1 ledger entries name an actor who is not a user")

    async def test_an_entry_naming_a_missing_request_is_reported(
        self, database: Database, world: World
    ) -> None:
        await rewrite_entries(database, world.alice.id, token_request_id=999_999)
        [problem] = await references(database)
        assert "name a token request that is missing or another user's" in problem

    async def test_an_entry_naming_another_users_request_is_reported(
        self, database: Database, world: World
    ) -> None:
        bobs = await add_request(database, world.org_id, world.bob.id, status="pending")
        await rewrite_entries(database, world.alice.id, token_request_id=bobs)
        [problem] = await references(database)
        assert "name a token request that is missing or another user's" in problem

    async def test_a_request_whose_decider_is_not_a_user_is_reported(
        self, database: Database, world: World
    ) -> None:
        await add_request(
            database, world.org_id, world.bob.id, status="rejected", decided_by_id=999_999
        )
        [problem] = await references(database)
        assert problem.startswith("1 token requests name a decider who is not a user")
