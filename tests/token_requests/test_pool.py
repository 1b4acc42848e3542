"""The organization's monthly pool caps what approvals may grant."""

from __future__ import annotations

import httpx
import pytest

from tests.factories import World, make_world, snapshot
from tests.token_requests.support import assert_ledger_consistent, decide, submit
from tokendesk.db import Database
from tokendesk.errors import Conflict
from tokendesk.token_requests import pool

URL = "/api/v1/token-requests"
# Acme's allocations: admin 100,000 + owner, alice, amy 50,000 each + bob 100,000 + nora 5,000.
ALLOCATED = 355_000


@pytest.fixture
async def pooled(database: Database) -> World:
    """Acme with a pool that leaves 5,000 tokens after everyone's allocation."""
    return await make_world(database, pool=ALLOCATED + 5_000)


class TestPoolUsage:
    async def test_usage_counts_allocations_and_grants_of_the_current_period(
        self, database: Database, pooled: World
    ) -> None:
        request = await submit(database, pooled.alice, amount=2_000)
        await decide(database, pooled.admin, request.id)
        async with database.transaction(write=False) as s:
            usage = await pool.pool_usage(s, organization_id=pooled.org_id)
        assert usage == pool.PoolUsage(
            pool=ALLOCATED + 5_000, allocated=ALLOCATED, granted=2_000, adjusted=0, left=3_000
        )

    async def test_an_organization_without_pool_has_no_usage(
        self, database: Database, world: World
    ) -> None:
        async with database.transaction(write=False) as s:
            assert await pool.pool_usage(s, organization_id=world.org_id) is None


class TestApprovalWithinPool:
    async def test_an_approval_that_fits_the_pool_is_granted(
        self, client: httpx.AsyncClient, database: Database, pooled: World
    ) -> None:
        request = await submit(database, pooled.alice, amount=5_000)
        response = await client.post(f"{URL}/{request.id}/approve", headers=pooled.admin.headers)
        assert response.status_code == 200, response.text
        await assert_ledger_consistent(database)

    async def test_an_approval_beyond_the_pool_is_refused_with_what_is_left(
        self, client: httpx.AsyncClient, database: Database, pooled: World
    ) -> None:
        request = await submit(database, pooled.alice, amount=6_000)
        before = await snapshot(database)
        response = await client.post(f"{URL}/{request.id}/approve", headers=pooled.admin.headers)
        assert response.status_code == 409
        assert "5000 tokens left" in response.json()["detail"]
        assert await snapshot(database) == before

    async def test_a_smaller_edited_amount_can_fit_where_the_requested_one_does_not(
        self, database: Database, pooled: World
    ) -> None:
        request = await submit(database, pooled.alice, amount=6_000)
        approved = await decide(database, pooled.admin, request.id, amount=5_000)
        assert approved.approved_amount == 5_000

    async def test_earlier_grants_use_up_the_pool(self, database: Database, pooled: World) -> None:
        first = await submit(database, pooled.alice, amount=4_000)
        await decide(database, pooled.admin, first.id)
        second = await submit(database, pooled.bob, amount=1_001)
        with pytest.raises(Conflict, match="1000 tokens left"):
            await decide(database, pooled.admin, second.id)
        await assert_ledger_consistent(database)

    async def test_a_rejection_never_needs_pool_room(
        self, database: Database, pooled: World
    ) -> None:
        request = await submit(database, pooled.alice, amount=900_000)
        rejected = await decide(database, pooled.admin, request.id, "reject")
        assert rejected.status == "rejected"
