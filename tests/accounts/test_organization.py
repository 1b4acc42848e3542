from __future__ import annotations

from datetime import datetime, timedelta

import httpx
from sqlalchemy import select

from tests.accounts.support import (
    API,
    acting_in,
    actor_of,
    audit_rows,
    entries_of,
    error_fields,
    ledger_is_consistent,
)
from tests.factories import World, snapshot
from tests.ledger_support import balance_of
from tokendesk.accounts import organizations
from tokendesk.accounts.schemas import OrganizationUpdate
from tokendesk.db import Database, utcnow
from tokendesk.events.bus import InProcessBus
from tokendesk.ledger import service as ledger
from tokendesk.ledger.models import Balance, EntryKind
from tokendesk.ledger.periods import period_bounds

# Sum of the Acme allocations in the world: admin, bob (org default), owner, alice,
# amy (Alpha default) and nora (override).
ACME_ALLOCATED = 100_000 * 2 + 50_000 * 3 + 5_000


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class TestReadOrganization:
    async def test_admins_see_settings_and_the_current_period(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.get(f"{API}/organization", headers=world.owner.headers)
        assert response.status_code == 200
        body = response.json()
        start, end = period_bounds(utcnow(), reset_day=1, timezone="UTC")
        assert (body["name"], body["default_allocation"], body["pool"]) == ("Acme", 100_000, None)
        assert (_at(body["period_start"]), _at(body["next_reset_at"])) == (start, end)
        assert body["pool_usage"] is None

    async def test_members_are_refused_with_403(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.get(f"{API}/organization", headers=world.alice.headers)
        assert response.status_code == 403

    async def test_pool_usage_counts_allocations_and_grants_of_this_period(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        await client.patch(f"{API}/organization", headers=world.admin.headers, json={"pool": 10**6})
        async with database.transaction() as s:
            for person, amount in ((world.alice, 1_000), (world.bob, 2_000)):
                await ledger.credit(
                    s,
                    user_id=person.id,
                    kind=EntryKind.GRANT,
                    amount=amount,
                    actor_id=world.admin.id,
                    reason="approved",
                )
            # Adjustments are corrections, not hand-outs from the pool.
            await ledger.credit(
                s,
                user_id=world.amy.id,
                kind=EntryKind.ADJUSTMENT,
                amount=9_999,
                actor_id=world.admin.id,
                reason="fix",
            )
        body = (await client.get(f"{API}/organization", headers=world.admin.headers)).json()
        assert body["pool_usage"] == {
            "pool": 10**6,
            "allocated": ACME_ALLOCATED,
            "granted": 3_000,
            "left": 10**6 - ACME_ALLOCATED - 3_000,
        }

    async def test_a_super_admin_reads_the_organization_named_in_the_header(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        home = await client.get(f"{API}/organization", headers=world.root.headers)
        acme = await client.get(f"{API}/organization", headers=acting_in(world.root, world.org_id))
        assert (home.json()["name"], acme.json()["name"]) == ("Other Org", "Acme")


class TestUpdateOrganization:
    async def test_a_new_reset_day_and_time_zone_move_every_current_period_end(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        old = await balance_of(database, world.bob.id)
        other_before = await balance_of(database, world.oscar.id)
        response = await client.patch(
            f"{API}/organization",
            headers=world.admin.headers,
            json={"reset_day": 15, "timezone": "America/New_York"},
        )
        assert response.status_code == 200
        expected = period_bounds(utcnow(), reset_day=15, timezone="America/New_York")[1]
        assert _at(response.json()["next_reset_at"]) == expected
        for person in (world.alice, world.bob, world.nora):
            me = (await client.get(f"{API}/me", headers=person.headers)).json()
            assert _at(me["balance"]["next_reset_at"]) == expected
            assert _at(me["balance"]["period_start"]) == old.period_start
        other_after = await balance_of(database, world.oscar.id)
        assert other_after.period_end == other_before.period_end
        (row,) = await audit_rows(database, "organization.updated")
        assert row.details["before"] == {"reset_day": 1, "timezone": "UTC"}
        assert row.details["after"] == {"reset_day": 15, "timezone": "America/New_York"}
        assert await ledger_is_consistent(database)

    async def test_members_hear_of_a_new_reset_date_after_commit(
        self, database: Database, world: World, bus: InProcessBus
    ) -> None:
        actor = await actor_of(database, world.admin)
        async with bus.subscribe() as queue:
            async with database.transaction() as s:
                await organizations.update_settings(
                    s, actor=actor, data=OrganizationUpdate(reset_day=15, timezone="Asia/Tokyo")
                )
                assert queue.empty()
            events = [queue.get_nowait() for _ in range(queue.qsize())]

        moved = {e.user_id: e.data for e in events if e.type == "balance.changed"}
        async with database.transaction(write=False) as s:
            acme = set(
                await s.scalars(
                    select(Balance.user_id).where(Balance.organization_id == world.org_id)
                )
            )
        assert acme and set(moved) == acme
        expected = period_bounds(utcnow(), reset_day=15, timezone="Asia/Tokyo")[1]
        bob = moved[world.bob.id]
        assert (bob["cause"], bob["timezone"]) == ("reset_schedule", "Asia/Tokyo")
        assert _at(bob["next_reset_at"]) == expected
        assert bob["remaining"] == (await balance_of(database, world.bob.id)).remaining

    async def test_periods_that_already_ended_reset_under_the_old_settings_first(
        self, database: Database, world: World
    ) -> None:
        old_end = (await balance_of(database, world.bob.id)).period_end
        later = old_end + timedelta(days=1)
        actor = await actor_of(database, world.admin)
        async with database.transaction() as s:
            await organizations.update_settings(
                s, actor=actor, data=OrganizationUpdate(reset_day=15), now=later
            )
        balance = await balance_of(database, world.bob.id)
        assert balance.period_start == old_end
        assert balance.period_end == period_bounds(later, reset_day=15, timezone="UTC")[1]
        resets = await entries_of(database, world.bob.id, EntryKind.ALLOCATION)
        assert [e.period_start for e in resets][-1] == old_end
        assert await ledger_is_consistent(database)

    async def test_sending_null_removes_the_pool_and_absent_fields_stay(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        set_ = await client.patch(
            f"{API}/organization", headers=world.admin.headers, json={"pool": 500_000}
        )
        assert set_.json()["pool_usage"]["pool"] == 500_000
        cleared = await client.patch(
            f"{API}/organization", headers=world.admin.headers, json={"pool": None}
        )
        body = cleared.json()
        assert (body["pool"], body["pool_usage"], body["max_request"]) == (None, None, 1_000_000)

    async def test_a_taken_name_is_a_conflict_naming_name(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        before = await snapshot(database)
        response = await client.patch(
            f"{API}/organization", headers=world.admin.headers, json={"name": "Other Org"}
        )
        assert response.status_code == 409 and error_fields(response.json()) == ["name"]
        assert await snapshot(database) == before

    async def test_team_owners_and_members_are_refused_with_403(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        for person in (world.owner, world.alice):
            response = await client.patch(
                f"{API}/organization", headers=person.headers, json={"max_request": 5}
            )
            assert response.status_code == 403


class TestOrganizations:
    async def test_a_super_admin_lists_every_organization(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.get(f"{API}/organizations", headers=world.root.headers)
        assert response.status_code == 200
        assert [o["name"] for o in response.json()] == ["Acme", "Other Org"]

    async def test_org_admins_are_refused_with_403(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        listed = await client.get(f"{API}/organizations", headers=world.admin.headers)
        created = await client.post(
            f"{API}/organizations", headers=world.admin.headers, json={"name": "Mine"}
        )
        assert (listed.status_code, created.status_code) == (403, 403)

    async def test_a_super_admin_creates_an_organization(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        response = await client.post(
            f"{API}/organizations",
            headers=world.root.headers,
            json={"name": "Initech", "reset_day": 5, "timezone": "Asia/Tokyo", "pool": 9_000},
        )
        assert response.status_code == 201
        body = response.json()
        assert body["pool_usage"] == {"pool": 9_000, "allocated": 0, "granted": 0, "left": 9_000}
        expected = period_bounds(utcnow(), reset_day=5, timezone="Asia/Tokyo")[1]
        assert _at(body["next_reset_at"]) == expected
        row = (await audit_rows(database, "organization.created"))[-1]
        assert row.actor_id == world.root.id

    async def test_a_taken_name_is_a_conflict_naming_name(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        before = await snapshot(database)
        response = await client.post(
            f"{API}/organizations", headers=world.root.headers, json={"name": "Acme"}
        )
        assert response.status_code == 409 and error_fields(response.json()) == ["name"]
        assert await snapshot(database) == before
