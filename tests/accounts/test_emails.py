"""One rule for email addresses: any syntactically valid one, internal domains
included, stored lower-cased and compared without regard to case."""

from __future__ import annotations

import httpx
import pytest

from tests.accounts.support import API, PASSWORD, error_fields, open_sessions, sign_in
from tests.factories import World, snapshot
from tokendesk.accounts.emails import BadEmail, normalize_email
from tokendesk.db import Database

INTERNAL = ["ann@corp.local", "ann@acme.internal", "ann@localhost", "ann@x.test"]
GARBAGE = [
    "",
    "   ",
    "ann",
    "ann@",
    "@corp.local",
    "ann smith@corp.local",
    "ann@corp local",
    "ann@@corp.local",
    "ann@corp..local",
    "ann.@corp.local",
    "ann@-corp.local",
    "ann\x00@corp.local",
    "ann\u200b@corp.local",
    "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 63,
    "a" * 65 + "@corp.local",
]


class TestNormalizeEmail:
    @pytest.mark.parametrize(
        "address", [*INTERNAL, "Ann@Corp.Example", "a.b+c@d-e.f", "jörg@bü.ch"]
    )
    def test_a_valid_address_is_accepted_whatever_its_domain(self, address: str) -> None:
        assert normalize_email(f" {address} ") == address.lower()

    @pytest.mark.parametrize("address", GARBAGE)
    def test_what_cannot_be_an_address_is_refused(self, address: str) -> None:
        with pytest.raises(BadEmail):
            normalize_email(address)


class TestCreateWithInternalDomains:
    @pytest.mark.parametrize("address", INTERNAL)
    async def test_an_internal_or_dot_less_domain_is_accepted(
        self, client: httpx.AsyncClient, world: World, address: str
    ) -> None:
        response = await client.post(
            f"{API}/users", headers=world.admin.headers, json={"email": address, "name": "Ann"}
        )
        assert response.status_code == 201, response.text
        assert response.json()["email"] == address

    async def test_one_address_in_two_cases_is_one_user(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        first = await client.post(
            f"{API}/users", headers=world.admin.headers, json={"email": "ANN@X.local", "name": "A"}
        )
        assert first.status_code == 201, first.text
        assert first.json()["email"] == "ann@x.local"
        before = await snapshot(database)
        second = await client.post(
            f"{API}/users", headers=world.admin.headers, json={"email": "ann@x.local", "name": "B"}
        )
        assert second.status_code == 409
        assert error_fields(second.json()) == ["email"]
        assert "ann@x.local" in second.text and "already exists" in second.text
        assert await snapshot(database) == before

    @pytest.mark.parametrize("address", GARBAGE)
    async def test_garbage_is_refused_naming_email_and_writes_nothing(
        self, client: httpx.AsyncClient, database: Database, world: World, address: str
    ) -> None:
        before = await snapshot(database)
        response = await client.post(
            f"{API}/users", headers=world.admin.headers, json={"email": address, "name": "X"}
        )
        assert response.status_code == 422
        assert error_fields(response.json()) == ["email"]
        assert await snapshot(database) == before


class TestSignInByEmail:
    async def test_the_email_is_matched_whatever_its_case(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        response = await sign_in(client, world.alice.email.upper(), PASSWORD)
        assert response.status_code == 303, response.text
        assert await open_sessions(database, world.alice.id) == 1
