"""Who sees and who decides which request, for every role."""

from __future__ import annotations

import httpx
import pytest

from tests.factories import World, snapshot
from tests.token_requests.support import assert_ledger_consistent, submit
from tokendesk.db import Database

URL = "/api/v1/token-requests"


def _headers(world: World, who: str) -> dict[str, str]:
    """``root@acme`` is the super admin with Acme chosen as the active organization."""
    name, _, org = who.partition("@")
    headers = dict(world.people[name].headers)
    if org == "acme":
        headers["X-Organization-Id"] = str(world.org_id)
    return headers


class TestVisibility:
    @pytest.mark.parametrize(
        ("viewer", "requester", "status"),
        [
            ("alice", "alice", 200),
            ("amy", "alice", 404),
            ("bob", "alice", 404),
            ("owner", "alice", 200),
            ("owner", "bob", 404),
            ("owner", "nora", 404),
            ("owner", "owner", 200),
            ("admin", "alice", 200),
            ("admin", "bob", 200),
            ("admin", "nora", 200),
            ("root", "alice", 404),
            ("root@acme", "alice", 200),
            ("olga", "alice", 404),
            ("admin", "oscar", 404),
            ("root", "oscar", 200),
        ],
    )
    async def test_a_request_is_visible_only_within_scope(
        self,
        client: httpx.AsyncClient,
        database: Database,
        world: World,
        viewer: str,
        requester: str,
        status: int,
    ) -> None:
        request = await submit(database, world.people[requester])
        response = await client.get(f"{URL}/{request.id}", headers=_headers(world, viewer))
        assert response.status_code == status

    async def test_an_org_admin_cannot_switch_into_another_organization(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        request = await submit(database, world.alice)
        headers = {**world.olga.headers, "X-Organization-Id": str(world.org_id)}
        response = await client.get(f"{URL}/{request.id}", headers=headers)
        assert response.status_code == 404

    @pytest.mark.parametrize(
        ("viewer", "visible"),
        [
            ("alice", {"alice"}),
            ("bob", {"bob"}),
            ("owner", {"alice", "amy", "owner"}),
            ("admin", {"alice", "amy", "owner", "bob", "nora", "admin"}),
            ("root", {"oscar"}),
            ("root@acme", {"alice", "amy", "owner", "bob", "nora", "admin"}),
            ("olga", {"oscar"}),
        ],
    )
    async def test_the_list_holds_exactly_the_requests_in_scope(
        self,
        client: httpx.AsyncClient,
        database: Database,
        world: World,
        viewer: str,
        visible: set[str],
    ) -> None:
        for name in ("alice", "amy", "owner", "bob", "nora", "admin", "oscar"):
            await submit(database, world.people[name])
        response = await client.get(URL, headers=_headers(world, viewer))
        assert response.status_code == 200, response.text
        emails = {item["user"]["email"] for item in response.json()["items"]}
        assert emails == {f"{name}@example.com" for name in visible}
        assert response.json()["total"] == len(visible)


class TestDecisionRights:
    @pytest.mark.parametrize("action", ["approve", "reject"])
    @pytest.mark.parametrize(
        ("decider", "requester", "status"),
        [
            ("amy", "alice", 403),
            ("alice", "alice", 403),
            ("owner", "alice", 200),
            ("owner", "bob", 404),
            ("owner", "owner", 403),
            ("admin", "alice", 200),
            ("admin", "owner", 200),
            ("admin", "admin", 403),
            ("root", "alice", 404),
            ("root@acme", "alice", 200),
            ("root@acme", "admin", 200),
            ("olga", "alice", 404),
            ("olga", "oscar", 200),
        ],
    )
    async def test_only_a_scoped_admin_other_than_the_requester_decides(
        self,
        client: httpx.AsyncClient,
        database: Database,
        world: World,
        action: str,
        decider: str,
        requester: str,
        status: int,
    ) -> None:
        request = await submit(database, world.people[requester])
        before = await snapshot(database)
        response = await client.post(
            f"{URL}/{request.id}/{action}", headers=_headers(world, decider)
        )
        assert response.status_code == status, response.text
        if status != 200:
            assert await snapshot(database) == before
        await assert_ledger_consistent(database)

    async def test_deciding_your_own_request_says_so(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        request = await submit(database, world.admin)
        response = await client.post(f"{URL}/{request.id}/approve", headers=world.admin.headers)
        assert response.status_code == 403
        assert response.json()["detail"] == "you cannot decide your own request"
