from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from tests.accounts.support import API, acting_in, error_fields
from tests.factories import Person, World


async def _audit(client: httpx.AsyncClient, by: Person | dict[str, str], query: str = "") -> Any:
    headers = by if isinstance(by, dict) else by.headers
    response = await client.get(f"{API}/audit?{query}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def _adjust(client: httpx.AsyncClient, world: World, target: Person, amount: int) -> None:
    response = await client.post(
        f"{API}/users/{target.id}/adjustments",
        headers=world.admin.headers,
        json={"amount": amount, "note": f"adjust {amount}"},
    )
    assert response.status_code == 200


class TestListAudit:
    async def test_org_admin_sees_their_org_newest_first_with_the_actor(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        await _adjust(client, world, world.bob, 10)
        await _adjust(client, world, world.alice, 20)
        body = await _audit(client, world.admin, "action=balance.adjusted")
        assert body["total"] == 2
        newest, oldest = body["items"]
        assert (newest["target_type"], newest["target_id"]) == ("user", str(world.alice.id))
        assert newest["details"]["amount"] == 20 and oldest["details"]["amount"] == 10
        assert newest["actor"] == {
            "id": world.admin.id,
            "name": "Admin",
            "email": "admin@example.com",
        }
        assert newest["created_at"] >= oldest["created_at"]

    async def test_entries_of_other_organizations_are_never_shown(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        acme = await _audit(client, world.admin, "limit=500")
        other = await _audit(client, world.olga, "limit=500")
        acme_targets = {(i["target_type"], i["target_id"]) for i in acme["items"]}
        other_targets = {(i["target_type"], i["target_id"]) for i in other["items"]}
        assert ("user", str(world.alice.id)) in acme_targets
        assert ("user", str(world.alice.id)) not in other_targets
        assert ("user", str(world.oscar.id)) in other_targets

    async def test_filters_by_actor_target_and_time(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        await _adjust(client, world, world.bob, 10)
        by_admin = await _audit(client, world.admin, f"actor_id={world.admin.id}")
        assert [i["action"] for i in by_admin["items"]] == ["balance.adjusted", "api_key.created"]
        on_bob = await _audit(client, world.admin, f"target_type=user&target_id={world.bob.id}")
        assert [i["action"] for i in on_bob["items"]] == ["balance.adjusted", "user.created"]
        stamp = quote(by_admin["items"][0]["created_at"])
        since = await _audit(client, world.admin, f"since={stamp}")
        assert [i["action"] for i in since["items"]] == ["balance.adjusted"]
        until = await _audit(client, world.admin, f"until={stamp}")
        assert "balance.adjusted" not in {i["action"] for i in until["items"]}
        assert until["total"] == (await _audit(client, world.admin))["total"] - 1

    async def test_pages_keep_the_total(self, client: httpx.AsyncClient, world: World) -> None:
        everything = await _audit(client, world.admin, "limit=500")
        page = await _audit(client, world.admin, "limit=2&offset=1")
        past = await _audit(client, world.admin, "offset=10000")
        assert page["total"] == past["total"] == everything["total"]
        assert page["items"] == everything["items"][1:3]
        assert past["items"] == []

    async def test_a_super_admin_reads_the_organization_named_in_the_header(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        body = await _audit(client, acting_in(world.root, world.org_id), "target_type=user")
        assert str(world.alice.id) in {i["target_id"] for i in body["items"]}

    async def test_team_owners_and_members_are_refused_with_403(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        for person in (world.owner, world.alice):
            response = await client.get(f"{API}/audit", headers=person.headers)
            assert response.status_code == 403

    async def test_an_until_before_since_is_refused_naming_until(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.get(
            f"{API}/audit?since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z",
            headers=world.admin.headers,
        )
        assert response.status_code == 422 and error_fields(response.json()) == ["until"]

    async def test_a_malformed_filter_is_refused_naming_it(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        for query, field in (("since=yesterday", "since"), ("limit=0", "limit")):
            response = await client.get(f"{API}/audit?{query}", headers=world.admin.headers)
            assert response.status_code == 422 and error_fields(response.json()) == [field]
