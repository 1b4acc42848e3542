"""The admin pages read ids and numbers as ASCII digits within a BIGINT, nothing else."""

from __future__ import annotations

import httpx
import pytest

from tests.factories import World, snapshot
from tests.web_admin.conftest import LoginFactory, submit
from tokendesk.bounds import DB_INT_MAX
from tokendesk.db import Database
from tokendesk.web.admin.bulk import _parse_ids
from tokendesk.web.admin.forms import number

TOO_BIG = str(DB_INT_MAX + 1)


class TestPathIds:
    @pytest.mark.parametrize(
        "path",
        [
            f"/admin/users/{TOO_BIG}",
            f"/admin/teams/{TOO_BIG}",
            f"/admin/requests/{TOO_BIG}/approve",
            "/admin/users/0",
        ],
    )
    async def test_an_id_no_row_can_have_shows_not_found(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory, path: str
    ) -> None:
        admin = await login(world.admin)
        response = await admin.get(path)
        assert response.status_code == 404, response.text
        assert "not found" in response.text


class TestQueryStrings:
    @pytest.mark.parametrize(
        "path",
        [
            "/admin/users?page=999999999999999999999",
            "/admin/audit?page=999999999999999999",
            "/admin/requests?page=999999999999999999",
            f"/admin/requests?team_id={TOO_BIG}",
            f"/admin/users?team_id={TOO_BIG}",
            "/admin/requests?team_id=%C2%B2",
        ],
    )
    async def test_a_number_past_any_row_or_page_is_ignored(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory, path: str
    ) -> None:
        admin = await login(world.admin)
        response = await admin.get(path)
        assert response.status_code == 200, response.text


class TestBulkForm:
    async def test_unicode_digits_and_impossible_ids_decide_nothing_else(
        self, client: httpx.AsyncClient, database: Database, world: World, login: LoginFactory
    ) -> None:
        request_id = await submit(client, world.alice, 1_000)
        admin = await login(world.admin)
        response = await admin.post(
            "/admin/requests/bulk",
            {"action": "approve", "ids": f"²,{TOO_BIG},{request_id},٣"},
        )
        assert response.status_code == 200, response.text
        assert "Approved 1 request" in response.text

    async def test_a_selection_of_unicode_digits_only_changes_nothing(
        self, client: httpx.AsyncClient, database: Database, world: World, login: LoginFactory
    ) -> None:
        await submit(client, world.alice, 1_000)
        admin = await login(world.admin)
        before = await snapshot(database)
        response = await admin.post("/admin/requests/bulk", {"action": "approve", "ids": "²,³"})
        assert response.status_code == 422, response.text
        assert await snapshot(database) == before

    def test_the_ids_field_keeps_ascii_ids_in_order_once_each(self) -> None:
        assert _parse_ids(f"3, 1,3,x,²,0,-2,{TOO_BIG},{DB_INT_MAX}") == [3, 1, DB_INT_MAX]


class TestFormNumbers:
    @pytest.mark.parametrize(
        ("raw", "parsed"),
        [("12,000", 12_000), ("-500", -500), ("+7", 7), ("²", "²"), ("١٢", "١٢"), ("", None)],
    )
    def test_only_ascii_digits_become_a_number(self, raw: str, parsed: int | str | None) -> None:
        assert number(raw) == parsed

    async def test_an_allocation_in_other_digits_is_refused_naming_the_field(
        self, client: httpx.AsyncClient, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        before = await snapshot(database)
        response = await admin.post(
            f"/admin/users/{world.bob.id}", {"name": "Bob", "allocation_override": "²"}
        )
        assert response.status_code == 422, response.text
        assert await snapshot(database) == before
