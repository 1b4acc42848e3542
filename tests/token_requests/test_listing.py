"""Reading the queue: list, filters, sorting, paging, counts and the pending badge."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from tests.factories import World
from tests.ledger.helpers import end_period
from tests.token_requests.support import actor_for, counting_statements, decide, members, submit
from tokendesk.db import Database, utcnow
from tokendesk.ledger import service as ledger
from tokendesk.token_requests import service

URL = "/api/v1/token-requests"


@pytest.fixture
async def queue(database: Database, world: World) -> dict[str, int]:
    """alice 1,000 pending · amy 3,000 approved · bob 2,000 pending · nora 500 rejected ·
    owner 4,000 cancelled (created in that order)."""
    ids = {}
    for name, amount in (("alice", 1_000), ("amy", 3_000), ("bob", 2_000)):
        ids[name] = (await submit(database, world.people[name], amount=amount)).id
    ids["nora"] = (await submit(database, world.nora, amount=500)).id
    ids["owner"] = (await submit(database, world.owner, amount=4_000)).id
    await decide(database, world.admin, ids["amy"], "approve")
    await decide(database, world.admin, ids["nora"], "reject", note="no")
    await decide(database, world.owner, ids["owner"], "cancel")
    return ids


async def _list(
    client: httpx.AsyncClient, world: World, who: str = "admin", **params: object
) -> httpx.Response:
    return await client.get(URL, params=params, headers=world.people[who].headers)


class TestList:
    async def test_items_carry_requester_team_balance_and_decider(
        self, client: httpx.AsyncClient, world: World, queue: dict[str, int]
    ) -> None:
        response = await _list(client, world, status="approved")
        assert response.status_code == 200, response.text
        [item] = response.json()["items"]
        assert item["id"] == queue["amy"]
        assert item["user"] == {"id": world.amy.id, "name": "Amy", "email": "amy@example.com"}
        assert item["team"] == {"id": world.team_a, "name": "Alpha"}
        assert item["decided_by"] == {"id": world.admin.id, "name": "Admin"}
        assert (item["balance_at_request"], item["current_balance"]) == (50_000, 53_000)

    @pytest.mark.parametrize(
        ("status", "names"),
        [
            ("pending", ["alice", "bob"]),
            ("approved", ["amy"]),
            ("rejected", ["nora"]),
            ("cancelled", ["owner"]),
            (None, ["alice", "amy", "bob", "nora", "owner"]),
        ],
    )
    async def test_the_status_filter_selects_one_tab(
        self,
        client: httpx.AsyncClient,
        world: World,
        queue: dict[str, int],
        status: str | None,
        names: list[str],
    ) -> None:
        params = {"status": status} if status else {}
        body = (await _list(client, world, **params)).json()
        assert [item["id"] for item in body["items"]] == [queue[n] for n in names]
        assert body["total"] == len(names)

    async def test_the_team_filter_selects_one_team(
        self, client: httpx.AsyncClient, world: World, queue: dict[str, int]
    ) -> None:
        body = (await _list(client, world, team_id=world.team_a)).json()
        assert [i["id"] for i in body["items"]] == [queue["alice"], queue["amy"], queue["owner"]]

    @pytest.mark.parametrize(
        ("q", "names"),
        [("ALI", ["alice"]), ("bob@EXAMPLE", ["bob"]), ("example.com", None), ("%", [])],
    )
    async def test_search_matches_name_or_email_ignoring_case(
        self,
        client: httpx.AsyncClient,
        world: World,
        queue: dict[str, int],
        q: str,
        names: list[str] | None,
    ) -> None:
        body = (await _list(client, world, q=q)).json()
        expected = list(queue.values()) if names is None else [queue[n] for n in names]
        assert sorted(i["id"] for i in body["items"]) == sorted(expected)
        assert body["total"] == len(expected)

    @pytest.mark.parametrize(
        ("sort", "amounts"),
        [
            ("created_at", [1_000, 3_000, 2_000, 500, 4_000]),
            ("-created_at", [4_000, 500, 2_000, 3_000, 1_000]),
            ("amount", [500, 1_000, 2_000, 3_000, 4_000]),
            ("-amount", [4_000, 3_000, 2_000, 1_000, 500]),
        ],
    )
    async def test_sorting(
        self,
        client: httpx.AsyncClient,
        world: World,
        queue: dict[str, int],
        sort: str,
        amounts: list[int],
    ) -> None:
        body = (await _list(client, world, sort=sort)).json()
        assert [i["amount"] for i in body["items"]] == amounts

    async def test_paging_keeps_the_total(
        self, client: httpx.AsyncClient, world: World, queue: dict[str, int]
    ) -> None:
        body = (await _list(client, world, sort="amount", limit=2, offset=1)).json()
        assert [i["amount"] for i in body["items"]] == [1_000, 2_000]
        assert body["total"] == 5

    @pytest.mark.parametrize(
        ("params", "field"),
        [
            ({"status": "open"}, "status"),
            ({"limit": 0}, "limit"),
            ({"limit": 501}, "limit"),
            ({"offset": -1}, "offset"),
            ({"sort": "name"}, "sort"),
            ({"team_id": "alpha"}, "team_id"),
        ],
    )
    async def test_bad_query_parameters_are_refused_naming_them(
        self, client: httpx.AsyncClient, world: World, params: dict[str, object], field: str
    ) -> None:
        response = await _list(client, world, **params)
        assert response.status_code == 422
        assert response.json()["detail"].startswith(f"{field}:")

    async def test_a_balance_whose_period_ended_shows_what_the_reset_leaves(
        self, database: Database, world: World
    ) -> None:
        request = await submit(database, world.alice, amount=1_000)
        await decide(database, world.admin, request.id)
        actor = await actor_for(database, world.admin)
        later = utcnow() + timedelta(days=40)
        async with database.transaction(write=False) as s:
            items, _ = await service.list_requests(s, actor=actor, now=later)
        assert items[0].current_balance == 50_000  # the grant ended with its period
        async with database.transaction() as s:
            await ledger.rollover_due(s, now=later)
            items, _ = await service.list_requests(s, actor=actor, now=later)
        assert items[0].current_balance == 50_000

    async def test_a_period_that_ended_in_debt_shows_the_balance_me_shows(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        request = await submit(database, world.alice, amount=1_000)
        # Alice's 50,000 period ends 10,000 in debt; the organization carries debt over.
        await end_period(database, world.alice.id, used=60_000)

        me = await client.get("/api/v1/me", headers=world.alice.headers)
        listed = await _list(client, world, status="pending")
        assert me.status_code == listed.status_code == 200, (me.text, listed.text)
        [item] = [item for item in listed.json()["items"] if item["id"] == request.id]
        assert item["current_balance"] == me.json()["balance"]["remaining"] == 40_000

    async def test_a_page_takes_the_same_few_queries_whatever_its_size(
        self, database: Database, world: World
    ) -> None:
        people = await members(database, world, 12, "page")
        for person in people:
            await submit(database, person)
        actor = await actor_for(database, world.admin)
        counts = []
        for limit in (2, 12):
            with counting_statements(database) as statements:
                async with database.transaction() as s:
                    items, total = await service.list_requests(s, actor=actor, limit=limit)
            assert (len(items), total) == (limit, 12)
            counts.append(len(statements))
        # BEGIN, the organization, the page, the total: no query per row.
        assert counts[0] == counts[1] <= 4


class TestCounts:
    async def test_counts_per_status_follow_scope_and_filters(
        self, client: httpx.AsyncClient, world: World, queue: dict[str, int]
    ) -> None:
        admin = await client.get(f"{URL}/counts", headers=world.admin.headers)
        assert admin.json() == {
            "pending": 2,
            "approved": 1,
            "rejected": 1,
            "cancelled": 1,
            "all": 5,
        }
        owner = await client.get(f"{URL}/counts", headers=world.owner.headers)
        assert owner.json() == {
            "pending": 1,
            "approved": 1,
            "rejected": 0,
            "cancelled": 1,
            "all": 3,
        }
        searched = await client.get(
            f"{URL}/counts", params={"q": "bob"}, headers=world.admin.headers
        )
        assert searched.json()["all"] == 1

    @pytest.mark.parametrize(("who", "count"), [("admin", 2), ("owner", 1), ("bob", 1), ("amy", 0)])
    async def test_the_pending_badge_counts_what_the_caller_sees(
        self,
        client: httpx.AsyncClient,
        world: World,
        queue: dict[str, int],
        who: str,
        count: int,
    ) -> None:
        response = await client.get(f"{URL}/pending-count", headers=world.people[who].headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"count": count}

    async def test_anonymous_callers_are_refused(self, client: httpx.AsyncClient) -> None:
        response = await client.get(f"{URL}/pending-count")
        assert response.status_code == 401
