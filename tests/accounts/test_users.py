from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx

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
from tokendesk.accounts import users
from tokendesk.db import Database
from tokendesk.ledger.models import EntryKind

ACME = {"admin", "owner", "alice", "amy", "bob", "nora"}


def _emails(body: dict[str, Any]) -> set[str]:
    return {item["email"].split("@")[0] for item in body["items"]}


class TestListUsers:
    async def test_org_admin_sees_everyone_in_their_org_and_nobody_else(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        body = (await client.get(f"{API}/users", headers=world.admin.headers)).json()
        assert _emails(body) == ACME
        assert body["total"] == len(ACME)

    async def test_team_owner_sees_only_members_of_the_teams_they_own(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        body = (await client.get(f"{API}/users", headers=world.owner.headers)).json()
        assert _emails(body) == {"owner", "alice", "amy"}
        assert body["total"] == 3

    async def test_member_is_refused_with_403(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        assert (await client.get(f"{API}/users", headers=world.alice.headers)).status_code == 403

    async def test_super_admin_sees_the_organization_named_in_the_header(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        home = (await client.get(f"{API}/users", headers=world.root.headers)).json()
        acme = (
            await client.get(f"{API}/users", headers=acting_in(world.root, world.org_id))
        ).json()
        assert _emails(home) == {"root", "olga", "oscar"}
        assert _emails(acme) == ACME

    async def test_org_admin_cannot_switch_organizations_with_the_header(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.get(f"{API}/users", headers=acting_in(world.olga, world.org_id))
        assert response.status_code == 404

    async def test_filters_narrow_the_list(self, client: httpx.AsyncClient, world: World) -> None:
        async def names(query: str) -> set[str]:
            response = await client.get(f"{API}/users?{query}", headers=world.admin.headers)
            assert response.status_code == 200
            return _emails(response.json())

        assert await names("q=AL") == {"alice"}
        assert await names("q=example.com") == ACME
        assert await names("q=%25") == set()
        assert await names(f"team_id={world.team_b}") == {"bob"}
        assert await names("role=team_owner") == {"owner"}
        assert await names("active=false") == set()

    async def test_inactive_users_are_found_by_the_active_filter(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        await client.patch(
            f"{API}/users/{world.bob.id}", headers=world.admin.headers, json={"is_active": False}
        )
        response = await client.get(f"{API}/users?active=false", headers=world.admin.headers)
        assert _emails(response.json()) == {"bob"}

    async def test_a_page_carries_the_total_of_all_pages(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        first = (await client.get(f"{API}/users?limit=4", headers=world.admin.headers)).json()
        rest = (
            await client.get(f"{API}/users?limit=4&offset=4", headers=world.admin.headers)
        ).json()
        past = (await client.get(f"{API}/users?offset=50", headers=world.admin.headers)).json()
        assert (len(first["items"]), len(rest["items"]), len(past["items"])) == (4, 2, 0)
        assert first["total"] == rest["total"] == past["total"] == 6
        assert _emails(first) | _emails(rest) == ACME

    async def test_each_user_says_where_their_allocation_comes_from(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        body = (await client.get(f"{API}/users", headers=world.admin.headers)).json()
        by_name = {item["email"].split("@")[0]: item for item in body["items"]}
        assert by_name["alice"]["allocation_source"] == "team"
        assert by_name["alice"]["team"] == {"id": world.team_a, "name": "Alpha"}
        assert by_name["bob"]["allocation_source"] == "organization"
        assert by_name["nora"]["allocation_source"] == "override"
        assert by_name["nora"]["balance"]["allocation"] == 5_000

    async def test_balances_of_ended_periods_are_rolled_over_before_listing(
        self, database: Database, world: World
    ) -> None:
        actor = await actor_of(database, world.admin)
        later = (await balance_of(database, world.bob.id)).period_end + timedelta(days=1)
        async with database.transaction() as s:
            rows, total = await users.list_users(s, actor=actor, limit=2, now=later)
            assert total == 6
            assert all(row.balance.period_end > later for row in rows)
            listed = {row.user.id for row in rows}
        for user_id in listed:
            resets = await entries_of(database, user_id, EntryKind.ALLOCATION)
            assert [e.reason for e in resets] == ["period opened", "monthly reset"]
        # Only the page was rolled over; the rest waits for its own read or the scheduler.
        assert (await balance_of(database, world.nora.id)).period_end < later
        assert await ledger_is_consistent(database)


class TestCreateUser:
    async def test_org_admin_creates_a_user_who_starts_with_the_full_allocation(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        response = await client.post(
            f"{API}/users",
            headers=world.admin.headers,
            json={"email": "Zed@Example.com", "name": " Zed ", "team_id": world.team_a},
        )
        assert response.status_code == 201
        body = response.json()
        assert (body["email"], body["name"], body["role"]) == ("zed@example.com", "Zed", "member")
        assert body["balance"]["remaining"] == 50_000
        row = (await audit_rows(database, "user.created"))[-1]
        assert row.actor_id == world.admin.id and row.target_id == str(body["id"])
        assert await ledger_is_consistent(database)

    async def test_team_owner_creates_a_member_into_a_team_they_own(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.post(
            f"{API}/users",
            headers=world.owner.headers,
            json={"email": "new@example.com", "name": "New", "team_id": world.team_a},
        )
        assert response.status_code == 201
        listed = (await client.get(f"{API}/users", headers=world.owner.headers)).json()
        assert "new" in _emails(listed)

    async def test_team_owner_may_not_create_outside_their_teams_or_above_member(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        before = await snapshot(database)
        for payload in (
            {"email": "x@example.com", "name": "X", "team_id": world.team_b},
            {"email": "x@example.com", "name": "X"},
            {"email": "x@example.com", "name": "X", "team_id": world.team_a, "role": "org_admin"},
        ):
            response = await client.post(f"{API}/users", headers=world.owner.headers, json=payload)
            assert response.status_code == 403, payload
        assert await snapshot(database) == before

    async def test_only_a_super_admin_creates_a_super_admin(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        payload = {"email": "boss@example.com", "name": "Boss", "role": "super_admin"}
        refused = await client.post(f"{API}/users", headers=world.admin.headers, json=payload)
        created = await client.post(
            f"{API}/users", headers=acting_in(world.root, world.org_id), json=payload
        )
        assert (refused.status_code, created.status_code) == (403, 201)

    async def test_member_is_refused_with_403(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.post(
            f"{API}/users",
            headers=world.alice.headers,
            json={"email": "x@example.com", "name": "X"},
        )
        assert response.status_code == 403

    async def test_a_taken_email_is_a_conflict_naming_email(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        before = await snapshot(database)
        response = await client.post(
            f"{API}/users",
            headers=world.admin.headers,
            json={"email": "OSCAR@example.com", "name": "Another Oscar"},
        )
        assert response.status_code == 409
        assert error_fields(response.json()) == ["email"]
        assert await snapshot(database) == before


class TestReadUser:
    async def test_member_reads_their_own_record(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.get(f"{API}/users/{world.alice.id}", headers=world.alice.headers)
        assert response.status_code == 200
        assert response.json()["balance"]["remaining"] == 50_000

    async def test_anyone_out_of_scope_gets_404(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        for viewer, target in (
            (world.alice, world.amy),
            (world.owner, world.bob),
            (world.olga, world.alice),
            (world.admin, world.oscar),
        ):
            response = await client.get(f"{API}/users/{target.id}", headers=viewer.headers)
            assert response.status_code == 404, (viewer.email, target.email)

    async def test_an_unknown_user_is_404(self, client: httpx.AsyncClient, world: World) -> None:
        response = await client.get(f"{API}/users/999999", headers=world.admin.headers)
        assert response.status_code == 404
