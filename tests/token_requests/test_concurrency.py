"""Concurrent deciders never grant twice: real concurrent connections and transactions.

PostgreSQL runs each transaction on its own pooled connection (up to the pool's
30 at once). SQLite is tested with several ``Database`` objects on one file, so
the writers contend for SQLite's own lock, not just the in-process one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.factories import Person, World, make_world
from tests.ledger_support import balance_of
from tests.token_requests.support import (
    actor_for,
    assert_ledger_consistent,
    grants_for,
    members,
    submit,
)
from tokendesk.accounts.actor import Actor
from tokendesk.accounts.models import Organization
from tokendesk.db import Database
from tokendesk.errors import Conflict
from tokendesk.ledger.models import EntryKind, LedgerEntry
from tokendesk.token_requests import bulk, decisions
from tokendesk.token_requests.schemas import BulkOut, TokenRequestOut


@pytest.fixture
def postgres_only(backend: str) -> None:
    if backend != "postgres":
        pytest.skip("needs PostgreSQL's concurrent connections")


@pytest.fixture
async def sqlite_writers(backend: str, db_url: str) -> AsyncIterator[list[Database]]:
    """Five independent SQLite engines on the test database file."""
    if backend != "sqlite":
        pytest.skip("concurrent writers on one SQLite file")
    writers = [Database(db_url) for _ in range(5)]
    yield writers
    for writer in writers:
        await writer.dispose()


async def _approve(database: Database, actor: Actor, request_id: int) -> TokenRequestOut:
    async with database.transaction() as s:
        return await decisions.approve(s, actor=actor, request_id=request_id)


async def _bulk_approve(database: Database, actor: Actor, ids: Sequence[int]) -> BulkOut:
    async with database.transaction() as s:
        return await bulk.bulk(s, actor=actor, action="approve", ids=ids)


def _split(results: Sequence[Any]) -> tuple[list[Any], list[BaseException]]:
    done = [r for r in results if not isinstance(r, BaseException)]
    failed = [r for r in results if isinstance(r, BaseException)]
    return done, failed


async def _deciders(database: Database, world: World) -> list[Actor]:
    return [
        await actor_for(database, world.admin),
        await actor_for(database, world.owner),
        await actor_for(database, world.root, organization_id=world.org_id),
    ]


async def _total_granted(database: Database) -> int:
    async with database.transaction(write=False) as s:
        total = await s.scalar(
            select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
                LedgerEntry.kind == EntryKind.GRANT.value
            )
        )
        return int(total or 0)


@pytest.mark.usefixtures("postgres_only")
class TestConcurrentApprovalsOnPostgres:
    async def test_fifty_concurrent_approvals_of_one_request_grant_once(
        self, database: Database, world: World
    ) -> None:
        request = await submit(database, world.alice, amount=7_000)
        deciders = await _deciders(database, world)
        results = await asyncio.gather(
            *(_approve(database, deciders[i % 3], request.id) for i in range(50)),
            return_exceptions=True,
        )
        done, failed = _split(results)
        assert len(done) == 1
        assert len(failed) == 49
        assert all(isinstance(e, Conflict) for e in failed), failed
        assert len(await grants_for(database, request.id)) == 1
        assert (await balance_of(database, world.alice)).granted == 7_000
        await assert_ledger_consistent(database)

    async def test_a_bulk_approval_racing_single_approvals_never_double_grants(
        self, database: Database, world: World
    ) -> None:
        people = await members(database, world, 20, "racer")
        requests = [await submit(database, p, amount=100 + i) for i, p in enumerate(people)]
        ids = [r.id for r in requests]
        admin = await actor_for(database, world.admin)
        root = await actor_for(database, world.root, organization_id=world.org_id)
        results = await asyncio.gather(
            _bulk_approve(database, admin, ids),
            *(_approve(database, root, request_id) for request_id in reversed(ids)),
            return_exceptions=True,
        )
        outcome, singles = results[0], results[1:]
        assert isinstance(outcome, BulkOut), outcome
        single_done, single_failed = _split(singles)
        assert all(isinstance(e, Conflict) for e in single_failed), single_failed
        decided_singly = {r.id for r in single_done}
        assert decided_singly.isdisjoint(outcome.decided)
        assert decided_singly | set(outcome.decided) == set(ids)
        assert {s.reason for s in outcome.skipped} <= {"already approved"}
        for person, request in zip(people, requests, strict=True):
            assert len(await grants_for(database, request.id)) == 1
            assert (await balance_of(database, person)).granted == request.amount
        await assert_ledger_consistent(database)

    async def test_concurrent_submissions_leave_one_pending_request(
        self, database: Database, world: World
    ) -> None:
        alice = await actor_for(database, world.alice)

        async def attempt() -> TokenRequestOut:
            async with database.transaction() as s:
                return await decisions.submit(s, actor=alice, amount=10)

        results = await asyncio.gather(*(attempt() for _ in range(10)), return_exceptions=True)
        done, failed = _split(results)
        assert len(done) == 1
        assert all(isinstance(e, Conflict) for e in failed), failed
        assert all(f"#{done[0].id}" in str(e) for e in failed)

    async def test_concurrent_approvals_never_exceed_the_pool(self, database: Database) -> None:
        world = await make_world(database, pool=355_000 + 5_000)
        people = await members(database, world, 10, "pooled")
        # New members took their own allocations out of the pool; give it back.
        async with database.transaction() as s:
            org = await s.get(Organization, world.org_id)
            assert org is not None
            org.pool = (org.pool or 0) + 10 * 100_000
        requests = [await submit(database, p, amount=1_000) for p in people]
        admin = await actor_for(database, world.admin)
        results = await asyncio.gather(
            *(_approve(database, admin, r.id) for r in requests), return_exceptions=True
        )
        done, failed = _split(results)
        assert len(done) == 5
        assert all(isinstance(e, Conflict) and "tokens left" in str(e) for e in failed)
        assert await _total_granted(database) == 5_000
        await assert_ledger_consistent(database)

    async def test_concurrent_bulk_approvals_never_exceed_the_pool(
        self, database: Database
    ) -> None:
        world = await make_world(database, pool=355_000 + 5_000)
        people = await members(database, world, 8, "pooled")
        async with database.transaction() as s:
            org = await s.get(Organization, world.org_id)
            assert org is not None
            org.pool = (org.pool or 0) + 8 * 100_000
        requests = [await submit(database, p, amount=1_000) for p in people]
        admin = await actor_for(database, world.admin)
        root = await actor_for(database, world.root, organization_id=world.org_id)
        first, second = [r.id for r in requests[:4]], [r.id for r in requests[4:]]
        results = await asyncio.gather(
            _bulk_approve(database, admin, first),
            _bulk_approve(database, root, second),
            _bulk_approve(database, admin, [*first[:2], *second[:2]]),
            return_exceptions=True,
        )
        # Whichever batch goes first takes 4,000 of the 5,000; every other needs 2,000 or more.
        done, failed = _split(results)
        assert len(done) == 1
        assert len(failed) == 2
        assert all(isinstance(e, Conflict) and "1000 tokens left" in str(e) for e in failed)
        assert await _total_granted(database) == 4_000
        for request in requests:
            assert len(await grants_for(database, request.id)) <= 1
        await assert_ledger_consistent(database)


class TestConcurrentWritersOnSqlite:
    async def test_concurrent_approvals_through_separate_engines_grant_once(
        self, database: Database, world: World, sqlite_writers: list[Database]
    ) -> None:
        request = await submit(database, world.alice, amount=3_000)
        deciders = await _deciders(database, world)
        results = await asyncio.gather(
            *(
                _approve(writer, deciders[i % 3], request.id)
                for i, writer in enumerate(sqlite_writers * 2)
            ),
            return_exceptions=True,
        )
        done, failed = _split(results)
        assert len(done) == 1
        assert all(isinstance(e, Conflict) for e in failed), failed
        assert len(await grants_for(database, request.id)) == 1
        assert (await balance_of(database, world.alice)).granted == 3_000
        await assert_ledger_consistent(database)

    async def test_a_bulk_approval_racing_single_approvals_grants_each_once(
        self, database: Database, world: World, sqlite_writers: list[Database]
    ) -> None:
        people: list[Person] = await members(database, world, 8, "racer")
        requests = [await submit(database, p, amount=10 + i) for i, p in enumerate(people)]
        ids = [r.id for r in requests]
        admin = await actor_for(database, world.admin)
        root = await actor_for(database, world.root, organization_id=world.org_id)
        results = await asyncio.gather(
            _bulk_approve(sqlite_writers[0], admin, ids),
            *(
                _approve(sqlite_writers[1 + i % 4], root, request_id)
                for i, request_id in enumerate(ids)
            ),
            return_exceptions=True,
        )
        outcome = results[0]
        assert isinstance(outcome, BulkOut), outcome
        single_done, single_failed = _split(results[1:])
        assert all(isinstance(e, Conflict) for e in single_failed), single_failed
        assert {r.id for r in single_done} | set(outcome.decided) == set(ids)
        for request in requests:
            assert len(await grants_for(database, request.id)) == 1
        await assert_ledger_consistent(database)
