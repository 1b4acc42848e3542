"""The auto-approve rules REST API: who may change which list, hostile input, audit."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tests.factories import World
from tokendesk.audit.models import AuditEntry
from tokendesk.db import Database
from tokendesk.token_requests.models import ApprovalRule

URL = "/api/v1/approval-rules"


async def _rules(database: Database) -> int:
    async with database.transaction(write=False) as s:
        return int(await s.scalar(select(func.count()).select_from(ApprovalRule)) or 0)


async def _create(client: httpx.AsyncClient, world: World, **body: Any) -> httpx.Response:
    return await client.post(URL, json={"name": "small", **body}, headers=world.admin.headers)


class TestCrud:
    async def test_create_list_update_reorder_delete_each_audited(
        self, client: httpx.AsyncClient, world: World, database: Database
    ) -> None:
        a = (await _create(client, world, name="A", max_amount=5_000, max_count=2)).json()
        b = (await _create(client, world, name="B", pool_floor=0)).json()
        assert (a["position"], b["position"]) == (1, 2)
        changed = await client.patch(
            f"{URL}/{a['id']}", json={"max_count": None, "name": "A2"}, headers=world.admin.headers
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["max_count"] is None and changed.json()["name"] == "A2"
        order = await client.put(
            f"{URL}/order", json={"ids": [b["id"], a["id"]]}, headers=world.admin.headers
        )
        assert [r["name"] for r in order.json()["items"]] == ["B", "A2"]
        listed = (await client.get(URL, headers=world.admin.headers)).json()["items"]
        assert [r["name"] for r in listed] == ["B", "A2"]
        gone = await client.delete(f"{URL}/{b['id']}", headers=world.admin.headers)
        assert gone.status_code == 204
        async with database.transaction(write=False) as s:
            actions = list(
                await s.scalars(
                    select(AuditEntry.action)
                    .where(AuditEntry.target_type == "approval_rule")
                    .order_by(AuditEntry.id)
                )
            )
        assert actions == [
            "approval_rule.created",
            "approval_rule.created",
            "approval_rule.updated",
            "approval_rule.reordered",
            "approval_rule.deleted",
        ]

    async def test_team_owners_manage_their_teams_rules_only(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        own = await client.post(
            URL, json={"name": "alpha", "team_id": world.team_a}, headers=world.owner.headers
        )
        assert own.status_code == 201, own.text
        other = await client.post(
            URL, json={"name": "beta", "team_id": world.team_b}, headers=world.owner.headers
        )
        assert other.status_code == 403
        org = await client.post(URL, json={"name": "org"}, headers=world.owner.headers)
        assert org.status_code == 403
        member = await client.post(
            URL, json={"name": "x", "team_id": world.team_a}, headers=world.alice.headers
        )
        assert member.status_code == 403
        assert (await client.get(URL, headers=world.alice.headers)).status_code == 403
        # Another organization's admin sees nothing of Acme's.
        rule_id = own.json()["id"]
        assert (await client.get(f"{URL}/{rule_id}", headers=world.olga.headers)).status_code == 404


HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"name": ""}, "name"),
    ({"name": "   "}, "name"),
    ({"name": "x" * 101}, "name"),
    ({"max_amount": 0}, "max_amount"),
    ({"max_amount": -5}, "max_amount"),
    ({"max_amount": 10**13}, "max_amount"),
    ({"max_amount": 1.5}, "max_amount"),
    ({"max_amount": "100"}, "max_amount"),
    ({"max_amount": True}, "max_amount"),
    ({"max_count": 0}, "max_count"),
    ({"max_count": 1_001}, "max_count"),
    ({"max_tokens": 2**64}, "max_tokens"),
    ({"pool_floor": -1}, "pool_floor"),
    ({"team_id": 0}, "team_id"),
    ({"team_id": "1"}, "team_id"),
    ({"enabled": "yes"}, "enabled"),
    ({"surprise": 1}, "surprise"),
]


class TestHostileInput:
    @pytest.mark.parametrize(("body", "field"), HOSTILE)
    async def test_refused_naming_the_field_and_nothing_written(
        self,
        client: httpx.AsyncClient,
        world: World,
        database: Database,
        body: dict[str, Any],
        field: str,
    ) -> None:
        response = await _create(client, world, **body)
        assert response.status_code == 422, response.text
        assert field in response.text
        assert await _rules(database) == 0

    async def test_a_team_of_another_organization_is_not_found(
        self, client: httpx.AsyncClient, world: World, database: Database
    ) -> None:
        response = await _create(client, world, team_id=2**63 - 1)
        assert response.status_code == 404
        assert await _rules(database) == 0

    async def test_a_duplicate_name_in_one_list_is_refused(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        assert (await _create(client, world, name="Small")).status_code == 201
        again = await _create(client, world, name="small")
        assert again.status_code == 409 and "name" in again.text

    @pytest.mark.parametrize(
        "ids", [[], [1, 1], [2**63], ["1"], [1, 2, 3]], ids=["empty", "dup", "huge", "str", "extra"]
    )
    async def test_a_bad_order_is_refused(
        self, client: httpx.AsyncClient, world: World, ids: list[Any]
    ) -> None:
        a = (await _create(client, world, name="A")).json()
        b = (await _create(client, world, name="B")).json()
        assert {a["id"], b["id"]} == {1, 2}
        response = await client.put(f"{URL}/order", json={"ids": ids}, headers=world.admin.headers)
        assert response.status_code == 422 and "ids" in response.text

    async def test_patch_refuses_bad_values_and_unknown_rules(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        rule = (await _create(client, world)).json()
        bad = await client.patch(
            f"{URL}/{rule['id']}", json={"max_count": -1}, headers=world.admin.headers
        )
        assert bad.status_code == 422 and "max_count" in bad.text
        for rule_id in (0, 999, 2**63):
            missing = await client.patch(
                f"{URL}/{rule_id}", json={"enabled": False}, headers=world.admin.headers
            )
            assert missing.status_code in (404, 422)

    async def test_preview_answers_for_an_unsaved_rule(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.post(
            f"{URL}/preview", json={"name": "draft", "max_amount": 10}, headers=world.admin.headers
        )
        assert response.status_code == 200, response.text
        assert response.json()["requests"] == 0
