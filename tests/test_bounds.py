"""Every integer the API takes stays within what the database holds (see tokendesk.bounds)."""

from __future__ import annotations

import httpx
import pytest

from tests.factories import World, snapshot
from tokendesk.bounds import DB_INT_MAX, MAX_TOKENS, parse_count, parse_id
from tokendesk.db import Database

API = "/api/v1"
# Ids no row can have: past a BIGINT (PostgreSQL refuses to bind them), far past it,
# zero and negative.
IMPOSSIBLE_IDS = [DB_INT_MAX + 1, 10**30, 0, -1]

PATH_ID_CALLS = [
    ("GET", "/token-requests/{id}", "admin", None),
    ("POST", "/token-requests/{id}/approve", "admin", None),
    ("POST", "/token-requests/{id}/reject", "admin", None),
    ("POST", "/token-requests/{id}/cancel", "alice", None),
    ("GET", "/users/{id}", "admin", None),
    ("GET", "/users/{id}", "alice", None),
    ("PATCH", "/users/{id}", "admin", {"name": "New"}),
    ("POST", "/users/{id}/adjustments", "admin", {"amount": 5, "note": "fix"}),
    ("GET", "/users/{id}/ledger", "admin", None),
    ("GET", "/users/{id}/api-keys", "admin", None),
    ("DELETE", "/me/api-keys/{id}", "alice", None),
    ("DELETE", "/api-keys/{id}", "admin", None),
    ("GET", "/teams/{id}", "admin", None),
    ("PATCH", "/teams/{id}", "admin", {"name": "New"}),
    ("DELETE", "/teams/{id}", "admin", None),
    ("GET", "/conversations/{id}", "alice", None),
    ("DELETE", "/conversations/{id}", "alice", None),
]


class TestPathIds:
    @pytest.mark.parametrize("bad_id", IMPOSSIBLE_IDS)
    @pytest.mark.parametrize(("method", "path", "who", "body"), PATH_ID_CALLS)
    async def test_an_id_no_row_can_have_answers_404_like_a_missing_one(
        self,
        client: httpx.AsyncClient,
        database: Database,
        world: World,
        method: str,
        path: str,
        who: str,
        body: dict[str, object] | None,
        bad_id: int,
    ) -> None:
        before = await snapshot(database)
        response = await client.request(
            method,
            API + path.format(id=bad_id),
            json=body,
            headers=world.people[who].headers,
        )
        assert response.status_code == 404, response.text
        assert response.json()["detail"].endswith(f"{bad_id} not found")
        assert await snapshot(database) == before

    async def test_a_missing_id_inside_the_range_answers_the_same(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        missing = await client.get(f"{API}/users/{DB_INT_MAX}", headers=world.admin.headers)
        beyond = await client.get(f"{API}/users/{DB_INT_MAX + 1}", headers=world.admin.headers)
        assert missing.status_code == beyond.status_code == 404
        assert missing.json()["detail"] == f"user {DB_INT_MAX} not found"


class TestQueryIntegers:
    @pytest.mark.parametrize(
        ("path", "field"),
        [
            (f"/token-requests?team_id={DB_INT_MAX + 1}", "team_id"),
            (f"/token-requests/counts?team_id={DB_INT_MAX + 1}", "team_id"),
            ("/token-requests?offset=1730070569117109400371200", "offset"),
            (f"/users?team_id={DB_INT_MAX + 1}", "team_id"),
            ("/users?offset=100000000000", "offset"),
            (f"/audit?actor_id={DB_INT_MAX + 1}", "actor_id"),
            (f"/analytics/top-users?team_id={DB_INT_MAX + 1}", "team_id"),
            ("/conversations?offset=100000000000000000000", "offset"),
        ],
    )
    async def test_a_number_past_its_bound_is_refused_naming_the_parameter(
        self, client: httpx.AsyncClient, world: World, path: str, field: str
    ) -> None:
        response = await client.get(API + path, headers=world.admin.headers)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == field


class TestAmounts:
    @pytest.mark.parametrize(
        ("method", "path", "body", "field"),
        [
            ("POST", "/token-requests", {"amount": MAX_TOKENS + 1}, "amount"),
            ("PATCH", "/organization", {"default_allocation": MAX_TOKENS + 1}, "default_allocation"),  # noqa: E501
            ("PATCH", "/organization", {"pool": MAX_TOKENS + 1}, "pool"),
            ("PATCH", "/organization", {"max_request": MAX_TOKENS + 1}, "max_request"),
            ("POST", "/teams", {"name": "T", "default_allocation": MAX_TOKENS + 1}, "default_allocation"),  # noqa: E501
        ],
    )  # fmt: skip
    async def test_an_amount_past_the_documented_maximum_is_refused(
        self,
        client: httpx.AsyncClient,
        database: Database,
        world: World,
        method: str,
        path: str,
        body: dict[str, object],
        field: str,
    ) -> None:
        before = await snapshot(database)
        response = await client.request(method, API + path, json=body, headers=world.admin.headers)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == field
        assert await snapshot(database) == before

    async def test_the_maximum_itself_is_accepted(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.patch(
            f"{API}/organization",
            json={"max_request": MAX_TOKENS, "pool": MAX_TOKENS},
            headers=world.admin.headers,
        )
        assert response.status_code == 200, response.text

    async def test_body_ids_past_a_bigint_are_refused_naming_the_field(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.patch(
            f"{API}/users/{world.alice.id}",
            json={"team_id": DB_INT_MAX + 1},
            headers=world.admin.headers,
        )
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == "team_id"


class TestOrganizationHeader:
    @pytest.mark.parametrize("header", [str(DB_INT_MAX + 1), "²", "٣", "-1"])
    async def test_an_impossible_organization_answers_404(
        self, client: httpx.AsyncClient, world: World, header: str
    ) -> None:
        response = await client.get(
            f"{API}/me",
            headers={**world.root.headers, "X-Organization-Id": header.encode()},  # type: ignore[dict-item]
        )
        assert response.status_code == 404, response.text


class TestParsing:
    @pytest.mark.parametrize("text", ["²", "٣", "\uff11", "3²", "-3", "+3", "1.0", "", " ", None])
    def test_only_ascii_digits_make_an_id(self, text: str | None) -> None:
        assert parse_id(text) is None

    def test_an_id_is_bounded_by_the_column(self) -> None:
        assert parse_id(" 42 ") == 42
        assert parse_id(str(DB_INT_MAX)) == DB_INT_MAX
        assert parse_id(str(DB_INT_MAX + 1)) is None
        assert parse_id("0") is None

    def test_a_count_takes_zero_and_its_own_maximum(self) -> None:
        assert parse_count("0") == 0
        assert parse_count("20", maximum=20) == 20
        assert parse_count("21", maximum=20) is None
        assert parse_count("9" * 5000) is None
