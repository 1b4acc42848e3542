"""Adjustments and allocation overrides are bound like approvals: the maximum per
request and the organization's pool, for every role; taking tokens back never is."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest

from tests.accounts.support import API, acting_in, actor_of, ledger_is_consistent
from tests.factories import Person, World, make_world, snapshot
from tests.ledger_support import balance_of
from tests.token_requests.support import decide, submit
from tokendesk.accounts import adjustments, users
from tokendesk.accounts.schemas import UserUpdate
from tokendesk.db import Database
from tokendesk.errors import Conflict
from tokendesk.ledger import service as ledger
from tokendesk.metering.service import UsageInput, record_usage
from tokendesk.token_requests import pool

# Acme's allocations: admin 100,000 + owner, alice, amy 50,000 each + bob 100,000 + nora 5,000.
ALLOCATED = 355_000
LEFT = 5_000


@pytest.fixture
async def pooled(database: Database) -> World:
    """Acme with a pool that leaves 5,000 tokens after everyone's allocation."""
    return await make_world(database, pool=ALLOCATED + LEFT)


async def _adjust(
    client: httpx.AsyncClient,
    by: Person,
    target: Person,
    amount: int,
    *,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return await client.post(
        f"{API}/users/{target.id}/adjustments",
        headers=headers or by.headers,
        json={"amount": amount, "note": "correction"},
    )


async def _patch(
    client: httpx.AsyncClient, by: Person, target: Person, body: dict[str, Any]
) -> httpx.Response:
    return await client.patch(f"{API}/users/{target.id}", headers=by.headers, json=body)


async def _left(database: Database, world: World) -> int:
    async with database.transaction(write=False) as s:
        usage = await pool.pool_usage(s, organization_id=world.org_id)
    assert usage is not None
    return usage.left


class TestAdjustmentsWithinThePool:
    async def test_a_team_owner_cannot_add_more_than_the_pool_has_left(
        self, client: httpx.AsyncClient, database: Database, pooled: World
    ) -> None:
        before = await snapshot(database)
        response = await _adjust(client, pooled.owner, pooled.alice, LEFT + 1)
        assert response.status_code == 409
        assert response.json()["errors"] == [
            {
                "field": "amount",
                "message": "amount: the organization's token pool has 5000 tokens left "
                "this period; granting 5001 would exceed it",
            }
        ]
        assert await snapshot(database) == before

    async def test_an_adjustment_that_fits_uses_up_the_pool(
        self, client: httpx.AsyncClient, database: Database, pooled: World
    ) -> None:
        assert (await _adjust(client, pooled.owner, pooled.alice, 3_000)).status_code == 200
        assert await _left(database, pooled) == 2_000
        assert (await _adjust(client, pooled.owner, pooled.amy, 2_001)).status_code == 409
        assert (await _adjust(client, pooled.owner, pooled.amy, 2_000)).status_code == 200
        assert await _left(database, pooled) == 0
        assert await ledger_is_consistent(database)

    async def test_org_admins_and_super_admins_are_bound_by_the_pool_too(
        self, client: httpx.AsyncClient, database: Database, pooled: World
    ) -> None:
        before = await snapshot(database)
        by_admin = await _adjust(client, pooled.admin, pooled.bob, LEFT + 1)
        by_root = await _adjust(
            client,
            pooled.root,
            pooled.bob,
            LEFT + 1,
            headers=acting_in(pooled.root, pooled.org_id),
        )
        assert (by_admin.status_code, by_root.status_code) == (409, 409)
        assert await snapshot(database) == before

    async def test_an_adjustment_counts_against_later_approvals(
        self, database: Database, pooled: World
    ) -> None:
        admin = await actor_of(database, pooled.admin)
        async with database.transaction() as s:
            await adjustments.adjust_balance(
                s, actor=admin, user_id=pooled.bob.id, amount=4_000, note="event"
            )
        request = await submit(database, pooled.alice, amount=1_001)
        with pytest.raises(Conflict, match="1000 tokens left"):
            await decide(database, pooled.admin, request.id)

    async def test_taking_tokens_back_is_never_limited(
        self, client: httpx.AsyncClient, database: Database, pooled: World
    ) -> None:
        assert (await _adjust(client, pooled.admin, pooled.bob, LEFT)).status_code == 200
        # Far above the maximum per request, with the pool used up: still allowed.
        response = await _adjust(client, pooled.admin, pooled.bob, -90_000)
        assert response.status_code == 200, response.text
        assert response.json()["adjusted"] == -85_000

    async def test_tokens_taken_from_one_person_lend_no_room_to_another(
        self, client: httpx.AsyncClient, database: Database, pooled: World
    ) -> None:
        assert (await _adjust(client, pooled.admin, pooled.bob, -10_000)).status_code == 200
        assert await _left(database, pooled) == LEFT
        assert (await _adjust(client, pooled.admin, pooled.amy, LEFT + 1)).status_code == 409

    async def test_undoing_an_adjustment_gives_its_room_back(
        self, client: httpx.AsyncClient, database: Database, pooled: World
    ) -> None:
        assert (await _adjust(client, pooled.admin, pooled.bob, LEFT)).status_code == 200
        assert (await _adjust(client, pooled.admin, pooled.bob, -LEFT)).status_code == 200
        assert await _left(database, pooled) == LEFT

    async def test_covering_a_carried_debit_takes_no_room_from_the_pool(
        self, client: httpx.AsyncClient, database: Database, pooled: World
    ) -> None:
        # Nora (5,000 a month) overspends by 1,200, and the next period opens with that debit.
        async with database.transaction() as s:
            await record_usage(
                s,
                organization_id=pooled.org_id,
                events=[UsageInput("over", pooled.nora.id, "gpt-4o", 1_000, 5_200)],
            )
        ended = (await balance_of(database, pooled.nora.id)).period_end
        async with database.transaction() as s:
            await ledger.rollover_due(s, now=ended + timedelta(minutes=1))
        assert (await balance_of(database, pooled.nora.id)).adjusted == -1_200
        # Her allocation already took this room: giving the debit back uses none of the pool.
        assert (await _adjust(client, pooled.admin, pooled.nora, 1_200)).status_code == 200
        assert await _left(database, pooled) == LEFT
        assert (await _adjust(client, pooled.admin, pooled.nora, LEFT + 1)).status_code == 409
        assert await ledger_is_consistent(database)


class TestAdjustmentsWithinTheMaximum:
    async def test_an_adjustment_above_the_maximum_per_request_is_refused_naming_amount(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        before = await snapshot(database)
        response = await _adjust(client, world.owner, world.alice, 10**9)
        assert response.status_code == 422
        assert response.json()["errors"] == [
            {
                "field": "amount",
                "message": "amount: adds 1000000000 tokens, more than the "
                "organization's maximum per request (1000000)",
            }
        ]
        assert await snapshot(database) == before

    async def test_the_maximum_binds_an_org_admin_without_a_pool(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        assert (await _adjust(client, world.admin, world.bob, 1_000_001)).status_code == 422
        assert (await _adjust(client, world.admin, world.bob, 1_000_000)).status_code == 200


class TestOverridesWithinThePool:
    async def test_raising_an_override_beyond_the_pool_is_refused_naming_the_field(
        self, client: httpx.AsyncClient, database: Database, pooled: World
    ) -> None:
        before = await snapshot(database)
        # Alice has 50,000 from her team; 55,001 raises her allocation by 5,001.
        response = await _patch(client, pooled.owner, pooled.alice, {"allocation_override": 55_001})
        assert response.status_code == 409
        body = response.json()
        assert body["errors"][0]["field"] == "allocation_override"
        assert "5000 tokens left" in body["detail"] and "granting 5001" in body["detail"]
        assert await snapshot(database) == before

    async def test_a_raise_that_fits_counts_against_the_pool(
        self, client: httpx.AsyncClient, database: Database, pooled: World
    ) -> None:
        response = await _patch(client, pooled.owner, pooled.alice, {"allocation_override": 54_000})
        assert response.status_code == 200, response.text
        assert await _left(database, pooled) == 1_000
        assert (await _adjust(client, pooled.owner, pooled.amy, 1_001)).status_code == 409

    async def test_lowering_an_allocation_is_never_limited(
        self, client: httpx.AsyncClient, database: Database, pooled: World
    ) -> None:
        assert (await _adjust(client, pooled.admin, pooled.bob, LEFT)).status_code == 200
        response = await _patch(client, pooled.admin, pooled.bob, {"allocation_override": 0})
        assert response.status_code == 200, response.text
        assert (await balance_of(database, pooled.bob.id)).allocation == 0

    async def test_clearing_an_override_back_to_a_larger_default_is_a_raise(
        self, client: httpx.AsyncClient, database: Database, pooled: World
    ) -> None:
        # Nora has an override of 5,000 and no team: clearing it gives her 100,000.
        response = await _patch(client, pooled.admin, pooled.nora, {"allocation_override": None})
        assert response.status_code == 409
        assert "granting 95000" in response.json()["detail"]

    async def test_a_raise_above_the_maximum_per_request_is_refused_naming_the_field(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        before = await snapshot(database)
        response = await _patch(client, world.admin, world.bob, {"allocation_override": 10**9})
        assert response.status_code == 422
        assert response.json()["errors"][0]["field"] == "allocation_override"
        assert await snapshot(database) == before
        # A raise of exactly the maximum is allowed: 100,000 + 1,000,000.
        ok = await _patch(client, world.admin, world.bob, {"allocation_override": 1_100_000})
        assert ok.status_code == 200, ok.text

    async def test_a_newcomers_override_above_the_default_is_a_raise(
        self, client: httpx.AsyncClient, database: Database, pooled: World
    ) -> None:
        before = await snapshot(database)
        body = {
            "email": "new@example.com",
            "name": "New",
            "team_id": pooled.team_a,
            "allocation_override": 50_000 + LEFT + 1,
        }
        response = await client.post(f"{API}/users", headers=pooled.owner.headers, json=body)
        assert response.status_code == 409
        assert response.json()["errors"][0]["field"] == "allocation_override"
        assert await snapshot(database) == before
        body["allocation_override"] = 50_000 + LEFT
        response = await client.post(f"{API}/users", headers=pooled.owner.headers, json=body)
        assert response.status_code == 201, response.text


class TestConcurrentIncreases:
    async def test_concurrent_adjustments_never_together_exceed_the_pool(
        self, database: Database, pooled: World
    ) -> None:
        admin = await actor_of(database, pooled.admin)
        owner = await actor_of(database, pooled.owner)
        targets = [pooled.alice, pooled.amy, pooled.bob, pooled.nora]

        async def adjust(i: int) -> None:
            actor = owner if targets[i % 4] in (pooled.alice, pooled.amy) else admin
            async with database.transaction() as s:
                await adjustments.adjust_balance(
                    s, actor=actor, user_id=targets[i % 4].id, amount=1_000, note=f"n{i}"
                )

        results = await asyncio.gather(*(adjust(i) for i in range(12)), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        assert len(failed) == 7
        assert all(isinstance(e, Conflict) and "tokens left" in str(e) for e in failed), failed
        assert await _left(database, pooled) == 0
        assert await ledger_is_consistent(database)

    async def test_adjustments_override_raises_and_approvals_share_the_pool(
        self, database: Database, pooled: World
    ) -> None:
        admin = await actor_of(database, pooled.admin)
        request = await submit(database, pooled.nora, amount=2_000)

        async def adjust() -> object:
            async with database.transaction() as s:
                return await adjustments.adjust_balance(
                    s, actor=admin, user_id=pooled.bob.id, amount=2_000, note="event"
                )

        async def raise_override(person: Person) -> object:
            # From the team's 50,000 to 52,000.
            async with database.transaction() as s:
                data = UserUpdate(allocation_override=52_000)
                return await users.update_user(s, actor=admin, user_id=person.id, data=data)

        async def approve() -> object:
            return await decide(database, pooled.admin, request.id)

        results = await asyncio.gather(
            adjust(),
            raise_override(pooled.alice),
            approve(),
            adjust(),
            raise_override(pooled.amy),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        # 5,000 left and five increases of 2,000: two fit, and nothing more than the pool.
        assert len(failed) == 3, results
        assert all(isinstance(e, Conflict) for e in failed), failed
        assert await _left(database, pooled) == 1_000
        assert await ledger_is_consistent(database)

    async def test_adjustments_through_separate_sqlite_engines_never_exceed_the_pool(
        self, database: Database, pooled: World, db_url: str, sqlite_only: None
    ) -> None:
        admin = await actor_of(database, pooled.admin)
        writers = [Database(db_url) for _ in range(5)]

        async def adjust(writer: Database, person: Person) -> None:
            async with writer.transaction() as s:
                await adjustments.adjust_balance(
                    s, actor=admin, user_id=person.id, amount=2_000, note="event"
                )

        try:
            results = await asyncio.gather(
                *(
                    adjust(w, p)
                    for w, p in zip(
                        writers,
                        [pooled.alice, pooled.amy, pooled.bob, pooled.nora, pooled.owner],
                        strict=True,
                    )
                ),
                return_exceptions=True,
            )
        finally:
            for writer in writers:
                await writer.dispose()
        failed = [r for r in results if isinstance(r, BaseException)]
        assert len(failed) == 3, results
        assert all(isinstance(e, Conflict) for e in failed), failed
        assert await _left(database, pooled) == 1_000
        assert await ledger_is_consistent(database)
