"""Allocation resolution: the user's override, else the team default, else the org default.

Every change takes effect in the current period at once, as an ``allocation_change``
ledger entry for the difference, and the cached balances stay equal to the ledger.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.accounts.support import (
    API,
    allocation_changes,
    entries_of,
    ledger_is_consistent,
)
from tests.factories import World
from tests.ledger_support import balance_of
from tokendesk.accounts.users import create_user
from tokendesk.db import Database
from tokendesk.ledger import service as ledger
from tokendesk.ledger.models import EntryKind


async def _patch(
    client: httpx.AsyncClient, world: World, path: str, body: dict[str, Any]
) -> httpx.Response:
    response = await client.patch(f"{API}{path}", headers=world.admin.headers, json=body)
    assert response.status_code == 200, response.text
    return response


async def _allocation(database: Database, user_id: int) -> int:
    return (await balance_of(database, user_id)).allocation


class TestAllocationOfNewUsers:
    @pytest.mark.parametrize(
        ("team", "override", "expected"),
        [
            ("alpha", 7_000, 7_000),  # override beats the team default
            ("alpha", 0, 0),  # a zero override is still an override
            ("alpha", None, 50_000),  # team default beats the org default
            ("beta", None, 100_000),  # a team without a default falls through
            (None, None, 100_000),  # no team: the org default
        ],
    )
    async def test_a_new_user_starts_with_the_resolved_allocation_in_full(
        self,
        database: Database,
        world: World,
        team: str | None,
        override: int | None,
        expected: int,
    ) -> None:
        team_id = {"alpha": world.team_a, "beta": world.team_b, None: None}[team]
        async with database.transaction() as s:
            user = await create_user(
                s,
                organization_id=world.org_id,
                email="new@example.com",
                name="New",
                team_id=team_id,
                allocation_override=override,
            )
            user_id = user.id
        balance = await balance_of(database, user_id)
        assert (balance.allocation, balance.remaining) == (expected, expected)
        (opened,) = await entries_of(database, user_id, EntryKind.ALLOCATION)
        assert opened.amount == expected
        assert await allocation_changes(database, user_id) == []
        assert await ledger_is_consistent(database)


class TestOverrideChanges:
    async def test_setting_an_override_applies_the_difference_at_once(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        await client.post(
            f"{API}/users/{world.alice.id}/adjustments",
            headers=world.admin.headers,
            json={"amount": -1_000, "note": "spent elsewhere"},
        )
        response = await _patch(
            client, world, f"/users/{world.alice.id}", {"allocation_override": 80_000}
        )
        assert response.json()["balance"]["remaining"] == 79_000
        assert await allocation_changes(database, world.alice.id) == [30_000]
        (change,) = await entries_of(database, world.alice.id, EntryKind.ALLOCATION_CHANGE)
        assert change.actor_id == world.admin.id and change.reason == "override changed"
        assert await ledger_is_consistent(database)

    async def test_clearing_an_override_falls_back_to_the_team_default(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        await _patch(client, world, f"/users/{world.alice.id}", {"allocation_override": 80_000})
        await _patch(client, world, f"/users/{world.alice.id}", {"allocation_override": None})
        assert await _allocation(database, world.alice.id) == 50_000
        assert await allocation_changes(database, world.alice.id) == [30_000, -30_000]
        assert await ledger_is_consistent(database)

    async def test_clearing_an_override_without_a_team_falls_back_to_the_org_default(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        await _patch(client, world, f"/users/{world.nora.id}", {"allocation_override": None})
        assert await _allocation(database, world.nora.id) == 100_000
        assert await allocation_changes(database, world.nora.id) == [95_000]
        assert await ledger_is_consistent(database)

    async def test_an_override_equal_to_the_current_allocation_writes_no_entry(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        await _patch(client, world, f"/users/{world.alice.id}", {"allocation_override": 50_000})
        assert await allocation_changes(database, world.alice.id) == []


class TestTeamChanges:
    async def test_moving_to_a_team_without_a_default_gives_the_org_default(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        await _patch(client, world, f"/users/{world.alice.id}", {"team_id": world.team_b})
        assert await _allocation(database, world.alice.id) == 100_000
        assert await allocation_changes(database, world.alice.id) == [50_000]
        assert await ledger_is_consistent(database)

    async def test_leaving_a_team_falls_back_to_the_org_default(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        await _patch(client, world, f"/users/{world.bob.id}", {"team_id": world.team_a})
        await _patch(client, world, f"/users/{world.bob.id}", {"team_id": None})
        assert await allocation_changes(database, world.bob.id) == [-50_000, 50_000]
        assert await ledger_is_consistent(database)

    async def test_a_user_with_an_override_keeps_it_across_teams(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        await _patch(client, world, f"/users/{world.nora.id}", {"team_id": world.team_a})
        assert await _allocation(database, world.nora.id) == 5_000
        assert await allocation_changes(database, world.nora.id) == []


class TestTeamDefaultChanges:
    async def test_a_new_team_default_reaches_members_without_an_override(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        await _patch(client, world, f"/users/{world.amy.id}", {"allocation_override": 1_000})
        await _patch(client, world, f"/teams/{world.team_a}", {"default_allocation": 60_000})
        for person in (world.owner, world.alice):
            assert await _allocation(database, person.id) == 60_000
            assert await allocation_changes(database, person.id) == [10_000]
        assert await _allocation(database, world.amy.id) == 1_000
        assert await allocation_changes(database, world.amy.id) == [-49_000]
        assert await allocation_changes(database, world.bob.id) == []
        assert await ledger_is_consistent(database)

    async def test_clearing_a_team_default_falls_back_to_the_org_default(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        await _patch(client, world, f"/teams/{world.team_a}", {"default_allocation": None})
        assert await _allocation(database, world.alice.id) == 100_000
        assert await allocation_changes(database, world.alice.id) == [50_000]
        assert await ledger_is_consistent(database)

    async def test_a_default_on_a_team_that_had_none_reaches_its_members(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        await _patch(client, world, f"/teams/{world.team_b}", {"default_allocation": 30_000})
        assert await allocation_changes(database, world.bob.id) == [-70_000]
        assert await ledger_is_consistent(database)


class TestTeamDeletion:
    async def test_members_of_a_deleted_team_fall_back_to_the_org_default(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        await _patch(client, world, f"/users/{world.amy.id}", {"allocation_override": 1_000})
        response = await client.delete(f"{API}/teams/{world.team_a}", headers=world.admin.headers)
        assert response.status_code == 204
        for person in (world.owner, world.alice):
            assert await _allocation(database, person.id) == 100_000
            assert await allocation_changes(database, person.id) == [50_000]
        assert await _allocation(database, world.amy.id) == 1_000
        (change,) = await entries_of(database, world.alice.id, EntryKind.ALLOCATION_CHANGE)
        assert change.reason == "team 'Alpha' deleted"
        assert await ledger_is_consistent(database)


class TestOrganizationDefaultChanges:
    async def test_a_new_org_default_reaches_only_users_it_governs(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        await _patch(client, world, "/organization", {"default_allocation": 80_000})
        for person in (world.admin, world.bob):
            assert await _allocation(database, person.id) == 80_000
            assert await allocation_changes(database, person.id) == [-20_000]
        for person in (world.owner, world.alice, world.amy, world.nora):
            assert await allocation_changes(database, person.id) == []
        # Another organization's users are untouched.
        assert await allocation_changes(database, world.oscar.id) == []
        assert await ledger_is_consistent(database)

    async def test_the_next_period_opens_with_the_new_allocation(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        await _patch(client, world, "/organization", {"default_allocation": 80_000})
        later = (await balance_of(database, world.bob.id)).period_end
        async with database.transaction() as s:
            balance = await ledger.get_balance(s, user_id=world.bob.id, now=later)
            assert (balance.allocation, balance.adjusted) == (80_000, 0)
        assert await ledger_is_consistent(database)
