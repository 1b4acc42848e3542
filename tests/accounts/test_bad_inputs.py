"""Every write endpoint: bad input answers 422 naming the field, and nothing is written."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.accounts.support import API, error_fields
from tests.factories import World, snapshot
from tokendesk.db import Database

# (method, path template, caller, body, field named in the error).
# In bodies, "#name" stands for that person's or team's id and "{name}" for the same id
# sent as a string.
CASES: list[tuple[str, str, str, Any, str]] = [
    ("POST", "/users", "admin", {"email": "not-an-email", "name": "X"}, "email"),
    ("POST", "/users", "admin", {"email": "x@example.com", "name": "   "}, "name"),
    ("POST", "/users", "admin", {"email": "x@example.com"}, "name"),
    ("POST", "/users", "admin", {"email": "x@example.com", "name": "X", "role": "king"}, "role"),
    (
        "POST",
        "/users",
        "admin",
        {"email": "x@example.com", "name": "X", "allocation_override": -1},
        "allocation_override",
    ),
    ("POST", "/users", "admin", {"email": "x@example.com", "name": "X", "team_id": 999}, "team_id"),
    (
        "POST",
        "/users",
        "admin",
        {"email": "x@example.com", "name": "X", "team_id": "{beta}"},
        "team_id",
    ),
    ("POST", "/users", "admin", {"email": "x@example.com", "name": "X", "pw": "x"}, "pw"),
    (
        "POST",
        "/users",
        "admin",
        {"email": "x@example.com", "name": "X", "password": "short"},
        "password",
    ),
    ("PATCH", "/users/{alice}", "admin", {"allocation_override": "100"}, "allocation_override"),
    ("PATCH", "/users/{alice}", "admin", {"allocation_override": 1.5}, "allocation_override"),
    ("PATCH", "/users/{alice}", "admin", {"allocation_override": 10**16}, "allocation_override"),
    ("PATCH", "/users/{alice}", "admin", {"team_id": 999_999}, "team_id"),
    ("PATCH", "/users/{alice}", "admin", {"name": None}, "name"),
    ("PATCH", "/users/{alice}", "admin", {"role": None}, "role"),
    ("PATCH", "/users/{alice}", "admin", {"is_active": "no"}, "is_active"),
    ("PATCH", "/users/{alice}", "admin", {"password": "short"}, "password"),
    ("PATCH", "/users/{alice}", "admin", {"email": "new@example.com"}, "email"),
    ("PATCH", "/users/{alice}", "admin", [1, 2], "body"),
    ("POST", "/users/{alice}/adjustments", "admin", {"amount": 0, "note": "x"}, "amount"),
    ("POST", "/users/{alice}/adjustments", "admin", {"amount": "5", "note": "x"}, "amount"),
    ("POST", "/users/{alice}/adjustments", "admin", {"amount": 2.5, "note": "x"}, "amount"),
    ("POST", "/users/{alice}/adjustments", "admin", {"amount": 10**16, "note": "x"}, "amount"),
    ("POST", "/users/{alice}/adjustments", "admin", {"amount": 5}, "note"),
    ("POST", "/users/{alice}/adjustments", "admin", {"amount": 5, "note": "  "}, "note"),
    ("POST", "/users/{alice}/adjustments", "admin", {"amount": 5, "note": "x" * 1001}, "note"),
    ("POST", "/teams", "admin", {"name": ""}, "name"),
    ("POST", "/teams", "admin", {"name": "T", "default_allocation": -5}, "default_allocation"),
    ("POST", "/teams", "admin", {"name": "T", "owners": []}, "owners"),
    ("PATCH", "/teams/{alpha}", "admin", {"name": None}, "name"),
    ("PATCH", "/teams/{alpha}", "admin", {"owner_ids": None}, "owner_ids"),
    ("PATCH", "/teams/{alpha}", "admin", {"owner_ids": ["{bob}"]}, "owner_ids.0"),
    ("PATCH", "/teams/{alpha}", "admin", {"owner_ids": ["#oscar"]}, "owner_ids"),
    ("PATCH", "/teams/{alpha}", "admin", {"owner_ids": ["#bob", "#oscar"]}, "owner_ids"),
    ("PATCH", "/teams/{alpha}", "admin", {"owner_ids": [999_999]}, "owner_ids"),
    ("PATCH", "/teams/{alpha}", "admin", {"default_allocation": "1"}, "default_allocation"),
    ("PATCH", "/organization", "admin", {"timezone": "Mars/Olympus_Mons"}, "timezone"),
    ("PATCH", "/organization", "admin", {"reset_day": 29}, "reset_day"),
    ("PATCH", "/organization", "admin", {"reset_day": 0}, "reset_day"),
    ("PATCH", "/organization", "admin", {"default_allocation": None}, "default_allocation"),
    ("PATCH", "/organization", "admin", {"default_allocation": -1}, "default_allocation"),
    ("PATCH", "/organization", "admin", {"max_request": 0}, "max_request"),
    ("PATCH", "/organization", "admin", {"low_balance_percent": 101}, "low_balance_percent"),
    ("PATCH", "/organization", "admin", {"pool": -1}, "pool"),
    ("PATCH", "/organization", "admin", {"period": "weekly"}, "period"),
    ("POST", "/organizations", "root", {"name": "X", "timezone": "Nowhere/Land"}, "timezone"),
    ("POST", "/organizations", "root", {"name": "X", "reset_day": 31}, "reset_day"),
    ("POST", "/organizations", "root", {"name": ""}, "name"),
    ("POST", "/me/api-keys", "alice", {"name": ""}, "name"),
    ("POST", "/me/api-keys", "alice", {"name": "x" * 101}, "name"),
    ("POST", "/me/api-keys", "alice", {"label": "x"}, "label"),
]


def _fill(value: Any, world: World) -> Any:
    ids = {
        "alice": world.alice.id,
        "bob": world.bob.id,
        "oscar": world.oscar.id,
        "alpha": world.team_a,
        "beta": world.team_b,
    }
    if isinstance(value, str) and value.startswith("#"):
        return ids[value[1:]]
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        # A quoted id where an integer belongs: strict fields must refuse it.
        return str(ids[value[1:-1]])
    if isinstance(value, dict):
        return {k: _fill(v, world) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, world) for v in value]
    return value


class TestBadInputs:
    @pytest.mark.parametrize(
        ("method", "path", "caller", "body", "field"),
        CASES,
        ids=[f"{m} {p} {f}" for m, p, _, _, f in CASES],
    )
    async def test_bad_input_answers_422_naming_the_field_and_writes_nothing(
        self,
        client: httpx.AsyncClient,
        database: Database,
        world: World,
        method: str,
        path: str,
        caller: str,
        body: Any,
        field: str,
    ) -> None:
        url = API + path.format(alice=world.alice.id, alpha=world.team_a)
        before = await snapshot(database)
        response = await client.request(
            method, url, headers=getattr(world, caller).headers, json=_fill(body, world)
        )
        assert response.status_code == 422, response.text
        assert field in error_fields(response.json())
        assert field in response.json()["detail"]
        assert await snapshot(database) == before
