"""The organization's carry-over setting, through the REST API."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.accounts.support import API, audit_rows
from tests.factories import World, snapshot
from tokendesk.db import Database


class TestCarryOverSetting:
    async def test_carrying_over_is_on_by_default(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        body = (await client.get(f"{API}/organization", headers=world.admin.headers)).json()
        assert body["carry_over_debt"] is True

    async def test_an_org_admin_turns_it_off_and_the_change_is_audited(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        response = await client.patch(
            f"{API}/organization", headers=world.admin.headers, json={"carry_over_debt": False}
        )
        assert response.status_code == 200, response.text
        assert response.json()["carry_over_debt"] is False
        again = await client.get(f"{API}/organization", headers=world.admin.headers)
        assert again.json()["carry_over_debt"] is False
        [row] = await audit_rows(database, "organization.updated")
        assert row.details["after"] == {"carry_over_debt": False}

    @pytest.mark.parametrize("value", [None, "no", 0, 1])
    async def test_anything_but_true_or_false_is_refused_naming_the_field(
        self, client: httpx.AsyncClient, database: Database, world: World, value: Any
    ) -> None:
        before = await snapshot(database)
        response = await client.patch(
            f"{API}/organization", headers=world.admin.headers, json={"carry_over_debt": value}
        )
        assert response.status_code == 422
        assert "carry_over_debt" in response.json()["detail"]
        assert await snapshot(database) == before
