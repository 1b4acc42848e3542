from __future__ import annotations

from datetime import timedelta

import httpx

from tests.accounts.support import (
    API,
    actor_of,
    audit_rows,
    entries_of,
    ledger_is_consistent,
)
from tests.factories import World
from tests.ledger_support import balance_of
from tokendesk.accounts import users
from tokendesk.db import Database
from tokendesk.ledger.models import EntryKind


class TestReadMe:
    async def test_member_sees_profile_team_and_balance(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.get(f"{API}/me", headers=world.alice.headers)
        assert response.status_code == 200
        body = response.json()
        assert (body["email"], body["role"]) == ("alice@example.com", "member")
        assert body["organization"] == {"id": world.org_id, "name": "Acme"}
        assert body["team"] == {"id": world.team_a, "name": "Alpha"}
        assert body["balance"]["allocation"] == 50_000
        assert body["balance"]["remaining"] == 50_000
        assert body["balance"]["next_reset_at"] > body["balance"]["period_start"]
        assert (body["low_balance_percent"], body["max_request"]) == (20, 1_000_000)

    async def test_member_without_a_team_has_a_null_team(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        body = (await client.get(f"{API}/me", headers=world.nora.headers)).json()
        assert body["team"] is None
        assert body["balance"]["allocation"] == 5_000

    async def test_a_call_without_credentials_is_refused_with_401(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        assert (await client.get(f"{API}/me")).status_code == 401

    async def test_a_balance_whose_period_ended_is_rolled_over_before_it_is_shown(
        self, database: Database, world: World
    ) -> None:
        actor = await actor_of(database, world.alice)
        old_end = (await balance_of(database, world.alice.id)).period_end
        async with database.transaction() as s:
            after = await users.me(s, actor=actor, now=old_end + timedelta(hours=1))
            assert after.balance.period_start == old_end
            assert after.balance.allocation == 50_000
        resets = await entries_of(database, world.alice.id, EntryKind.ALLOCATION)
        assert [e.reason for e in resets] == ["period opened", "monthly reset"]
        assert await ledger_is_consistent(database)


class TestMyApiKeys:
    async def test_listing_never_shows_the_key(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.get(f"{API}/me/api-keys", headers=world.alice.headers)
        assert response.status_code == 200
        (key,) = response.json()
        assert "key" not in key and "key_hash" not in key
        assert world.alice.key.startswith(key["prefix"])

    async def test_a_new_key_is_shown_once_and_works_at_once(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        created = await client.post(
            f"{API}/me/api-keys", headers=world.alice.headers, json={"name": "laptop"}
        )
        assert created.status_code == 201
        body = created.json()
        assert body["name"] == "laptop" and body["key"].startswith(body["prefix"])
        me = await client.get(f"{API}/me", headers={"Authorization": f"Bearer {body['key']}"})
        assert me.json()["id"] == world.alice.id
        listed = (await client.get(f"{API}/me/api-keys", headers=world.alice.headers)).json()
        assert len(listed) == 2 and all("key" not in k for k in listed)

    async def test_a_key_without_a_name_is_called_default(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        created = await client.post(f"{API}/me/api-keys", headers=world.bob.headers)
        assert created.status_code == 201
        assert created.json()["name"] == "default"

    async def test_a_revoked_key_answers_401_on_the_next_call(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        (key,) = (await client.get(f"{API}/me/api-keys", headers=world.alice.headers)).json()
        revoked = await client.delete(f"{API}/me/api-keys/{key['id']}", headers=world.alice.headers)
        assert revoked.status_code == 204
        assert (await client.get(f"{API}/me", headers=world.alice.headers)).status_code == 401
        (row,) = await audit_rows(database, "api_key.revoked")
        assert (row.actor_id, row.target_id) == (world.alice.id, str(key["id"]))

    async def test_someone_elses_key_answers_404(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        (amys,) = (await client.get(f"{API}/me/api-keys", headers=world.amy.headers)).json()
        response = await client.delete(
            f"{API}/me/api-keys/{amys['id']}", headers=world.admin.headers
        )
        assert response.status_code == 404
        assert (await client.get(f"{API}/me", headers=world.amy.headers)).status_code == 200

    async def test_revoking_a_key_twice_is_a_conflict(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        created = await client.post(f"{API}/me/api-keys", headers=world.bob.headers)
        key_id = created.json()["id"]
        first = await client.delete(f"{API}/me/api-keys/{key_id}", headers=world.bob.headers)
        second = await client.delete(f"{API}/me/api-keys/{key_id}", headers=world.bob.headers)
        assert (first.status_code, second.status_code) == (204, 409)
