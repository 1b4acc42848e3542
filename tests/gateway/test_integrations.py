"""Chat apps behind the gateway: an integration key, and the user its chat app names.

The stand-ins send exactly what the chat apps send: Open WebUI's forwarded
``X-OpenWebUI-User-*`` headers (and the ``X-Open-WebUI-*`` spelling of its docs,
or the signed ``X-OpenWebUI-User-Jwt``), LibreChat's body ``user``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

import jwt
import pytest
from sqlalchemy import func, select

from tests.factories import World
from tests.gateway.conftest import Harness
from tests.ledger_support import balance_of
from tokendesk.accounts.integrations import create_integration
from tokendesk.accounts.models import (
    ExternalIdentity,
    IdentityPreset,
    Organization,
    Team,
    User,
)
from tokendesk.audit.models import AuditEntry
from tokendesk.db import Database

MESSAGES = [{"role": "user", "content": "Say hello"}]
JWT_SECRET = "open-webui-forwarding-secret-0123456789"
# What the fake upstream's "fast" model reports for MESSAGES.
USED = 24


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "fast", "messages": MESSAGES, **extra}


async def integration(
    database: Database, world: World, preset: IdentityPreset, **options: Any
) -> str:
    async with database.transaction() as s:
        _, key = await create_integration(
            s,
            organization_id=world.org_id,
            name=f"{preset.value} {len(options)}",
            preset=preset,
            actor_id=world.admin.id,
            **options,
        )
    return key


def open_webui(
    key: str, *, user_id: str, email: str, name: str = "Ann Example", spelling: str = "OpenWebUI"
) -> dict[str, str]:
    """Open WebUI 0.12's headers with ENABLE_FORWARD_USER_INFO_HEADERS=true."""
    return {
        "Authorization": f"Bearer {key}",
        f"X-{spelling}-User-Id": user_id,
        f"X-{spelling}-User-Email": email,
        f"X-{spelling}-User-Name": quote(name, safe=" "),
        f"X-{spelling}-User-Role": "user",
        f"X-{spelling}-Chat-Id": "3f0c5d6e-1111-4222-8333-944455556666",
    }


def signed(key: str, *, user_id: str, email: str, secret: str = JWT_SECRET, **claims: Any) -> dict:
    """Open WebUI's headers with FORWARD_USER_INFO_HEADER_JWT_SECRET set."""
    now = int(time.time())
    token = jwt.encode(
        {
            "sub": user_id,
            "email": email,
            "name": "Ann Example",
            "role": "user",
            "iss": "open-webui",
            "iat": now,
            "exp": now + 300,
            **claims,
        },
        secret,
        algorithm="HS256",
    )
    return {"Authorization": f"Bearer {key}", "X-OpenWebUI-User-Jwt": token}


async def user_by_email(database: Database, email: str) -> User | None:
    async with database.transaction(write=False) as s:
        return await s.scalar(select(User).where(func.lower(User.email) == email))


async def total_used(database: Database) -> int:
    async with database.transaction(write=False) as s:
        from tokendesk.ledger.models import Balance

        return int(await s.scalar(select(func.coalesce(func.sum(Balance.used), 0))) or 0)


async def chat(harness: Harness, headers: dict[str, str], **extra: Any) -> Any:
    return await harness.http.post("/v1/chat/completions", json=body(**extra), headers=headers)


class TestOpenWebUIHeaders:
    async def test_a_known_user_is_metered_to_that_user(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        key = await integration(database, world, IdentityPreset.OPEN_WEBUI)
        headers = open_webui(key, user_id="0b6d6a3e-known", email=world.alice.email)
        r = await chat(harness, headers)
        assert r.status_code == 200, r.text
        await harness.settled()
        assert (await balance_of(database, world.alice.id)).used == USED
        assert (await balance_of(database, world.admin.id)).used == 0

    async def test_the_other_header_spelling_works_alike(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        key = await integration(database, world, IdentityPreset.OPEN_WEBUI)
        headers = open_webui(
            key, user_id="0b6d6a3e-spelled", email=world.bob.email, spelling="Open-WebUI"
        )
        r = await chat(harness, headers, stream=True)
        assert r.status_code == 200, r.text
        await harness.settled()
        assert (await balance_of(database, world.bob.id)).used == USED

    async def test_a_new_user_is_provisioned_and_metered_at_once(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        key = await integration(database, world, IdentityPreset.OPEN_WEBUI)
        headers = open_webui(
            key, user_id="9d7f-new", email="ann@corp.example", name="Ann Müller-Łódź"
        )
        r = await chat(harness, headers)
        assert r.status_code == 200, r.text
        await harness.settled()
        ann = await user_by_email(database, "ann@corp.example")
        assert ann is not None
        assert ann.name == "Ann Müller-Łódź"
        assert ann.organization_id == world.org_id
        assert ann.role == "member"
        balance = await balance_of(database, ann.id)
        assert balance.allocation == 100_000
        assert balance.used == USED
        async with database.transaction(write=False) as s:
            mine = select(AuditEntry.action).where(AuditEntry.target_id == str(ann.id))
            actions = set(await s.scalars(mine))
        assert {"user.provisioned", "user.identity_linked"} <= actions

    @pytest.mark.parametrize("email", ["Ann@Corp.Local", "ann@localhost"])
    async def test_a_person_at_an_internal_domain_is_provisioned_lower_cased(
        self, harness: Harness, world: World, database: Database, email: str
    ) -> None:
        key = await integration(database, world, IdentityPreset.OPEN_WEBUI)
        r = await chat(harness, open_webui(key, user_id="uuid-internal", email=email))
        assert r.status_code == 200, r.text
        await harness.settled()
        ann = await user_by_email(database, email.lower())
        assert ann is not None and ann.email == email.lower()
        assert (await balance_of(database, ann.id)).used == USED

    async def test_an_existing_user_is_linked_whatever_the_case_of_the_email(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        key = await integration(database, world, IdentityPreset.OPEN_WEBUI)
        headers = open_webui(key, user_id="uuid-alice-upper", email=world.alice.email.upper())
        r = await chat(harness, headers)
        assert r.status_code == 200, r.text
        await harness.settled()
        assert (await balance_of(database, world.alice.id)).used == USED

    async def test_an_email_change_follows_the_id(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        key = await integration(database, world, IdentityPreset.OPEN_WEBUI)
        first = await chat(harness, open_webui(key, user_id="uuid-amy", email=world.amy.email))
        assert first.status_code == 200, first.text
        renamed = open_webui(key, user_id="uuid-amy", email="amy.new@example.com")
        second = await chat(harness, renamed)
        assert second.status_code == 200, second.text
        await harness.settled()
        assert (await balance_of(database, world.amy.id)).used == 2 * USED
        assert await user_by_email(database, "amy.new@example.com") is None
        async with database.transaction(write=False) as s:
            seen = await s.scalar(
                select(ExternalIdentity.email).where(ExternalIdentity.external_id == "uuid-amy")
            )
        assert seen == "amy.new@example.com"

    async def test_no_user_header_is_refused_and_nobody_pays(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        key = await integration(database, world, IdentityPreset.OPEN_WEBUI)
        before = await total_used(database)
        r = await chat(harness, {"Authorization": f"Bearer {key}"})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert "x-openwebui-user-id" in error["message"]
        assert "integration key" in error["message"]
        await harness.settled()
        assert await total_used(database) == before

    async def test_a_deactivated_user_stays_refused_with_a_message_that_says_so(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        key = await integration(database, world, IdentityPreset.OPEN_WEBUI)
        headers = open_webui(key, user_id="uuid-bob", email=world.bob.email)
        assert (await chat(harness, headers)).status_code == 200
        r = await harness.http.patch(
            f"/api/v1/users/{world.bob.id}", json={"is_active": False}, headers=world.admin.headers
        )
        assert r.status_code == 200, r.text
        await asyncio.sleep(0)  # the credentials event clears the cache after commit
        refused = await chat(harness, headers)
        assert refused.status_code == 403, refused.text
        assert "deactivated" in refused.json()["error"]["message"]

    async def test_a_user_of_another_organization_is_not_linked(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        key = await integration(database, world, IdentityPreset.OPEN_WEBUI)
        r = await chat(harness, open_webui(key, user_id="uuid-oscar", email=world.oscar.email))
        assert r.status_code == 403, r.text
        await harness.settled()
        assert (await balance_of(database, world.oscar.id)).used == 0

    async def test_models_are_listed_with_or_without_a_user(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        key = await integration(database, world, IdentityPreset.OPEN_WEBUI)
        bare = await harness.http.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert bare.status_code == 200, bare.text
        named = await harness.http.get(
            "/v1/models", headers=open_webui(key, user_id="uuid-list", email="lister@corp.local")
        )
        assert named.status_code == 200, named.text
        assert {m["id"] for m in named.json()["data"]} >= {"fast"}
        assert await user_by_email(database, "lister@corp.local") is not None

    async def test_two_first_calls_at_once_provision_one_user(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        key = await integration(database, world, IdentityPreset.OPEN_WEBUI)
        headers = open_webui(key, user_id="uuid-twice", email="twice@corp.example")
        replies = await asyncio.gather(*(chat(harness, headers) for _ in range(6)))
        assert [r.status_code for r in replies] == [200] * 6
        await harness.settled()
        async with database.transaction(write=False) as s:
            count = await s.scalar(
                select(func.count()).select_from(User).where(User.email == "twice@corp.example")
            )
        assert count == 1
        ann = await user_by_email(database, "twice@corp.example")
        assert ann is not None
        assert (await balance_of(database, ann.id)).used == 6 * USED


class TestSignedIdentity:
    async def test_the_right_secret_is_accepted(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        key = await integration(database, world, IdentityPreset.OPEN_WEBUI, jwt_secret=JWT_SECRET)
        r = await chat(harness, signed(key, user_id="uuid-signed", email=world.alice.email))
        assert r.status_code == 200, r.text
        await harness.settled()
        assert (await balance_of(database, world.alice.id)).used == USED

    async def test_a_wrong_secret_is_refused(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        key = await integration(database, world, IdentityPreset.OPEN_WEBUI, jwt_secret=JWT_SECRET)
        before = await total_used(database)
        wrong = "a-wrong-secret-of-the-right-length-0123"
        forged = signed(key, user_id="uuid-x", email=world.alice.email, secret=wrong)
        r = await chat(harness, forged)
        assert r.status_code == 403, r.text
        assert "does not verify" in r.json()["error"]["message"]
        await harness.settled()
        assert await total_used(database) == before

    async def test_an_expired_identity_is_refused(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        key = await integration(database, world, IdentityPreset.OPEN_WEBUI, jwt_secret=JWT_SECRET)
        old = int(time.time()) - 3600
        stale = signed(key, user_id="uuid-old", email=world.alice.email, iat=old, exp=old + 300)
        r = await chat(harness, stale)
        assert r.status_code == 403, r.text
        assert "expired" in r.json()["error"]["message"]

    async def test_plain_headers_do_not_count_where_a_secret_is_set(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        key = await integration(database, world, IdentityPreset.OPEN_WEBUI, jwt_secret=JWT_SECRET)
        r = await chat(harness, open_webui(key, user_id="uuid-plain", email=world.alice.email))
        assert r.status_code == 400, r.text
        assert "x-openwebui-user-jwt" in r.json()["error"]["message"]

    async def test_a_signed_identity_without_a_secret_to_check_it_is_refused(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        key = await integration(database, world, IdentityPreset.OPEN_WEBUI)
        r = await chat(harness, signed(key, user_id="uuid-unchecked", email=world.alice.email))
        assert r.status_code == 400, r.text


class TestLibreChat:
    async def test_the_body_user_names_a_linked_member(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        key = await integration(database, world, IdentityPreset.LIBRECHAT)
        auth = {"Authorization": f"Bearer {key}"}
        first = await chat(
            harness,
            {**auth, "X-LibreChat-User-Email": world.nora.email},
            user="65f1c0ffee0000000000beef",
        )
        assert first.status_code == 200, first.text
        # Linked now: the id alone is enough, as LibreChat sends it by default.
        again = await chat(harness, auth, user="65f1c0ffee0000000000beef")
        assert again.status_code == 200, again.text
        await harness.settled()
        assert (await balance_of(database, world.nora.id)).used == 2 * USED

    async def test_an_unknown_id_without_an_email_asks_for_the_email_header(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        key = await integration(database, world, IdentityPreset.LIBRECHAT)
        r = await chat(harness, {"Authorization": f"Bearer {key}"}, user="65f1-unknown")
        assert r.status_code == 400, r.text
        assert "x-librechat-user-email" in r.json()["error"]["message"]

    @pytest.mark.parametrize("user", [12, "", " ", "a b", "x" * 300, ["list"]])
    async def test_a_malformed_user_is_refused_naming_it(
        self, harness: Harness, world: World, database: Database, user: Any
    ) -> None:
        key = await integration(database, world, IdentityPreset.LIBRECHAT)
        r = await chat(harness, {"Authorization": f"Bearer {key}"}, user=user)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "user"


class TestProvisioningRules:
    async def set_org(self, database: Database, world: World, **values: Any) -> None:
        async with database.transaction() as s:
            org = await s.get(Organization, world.org_id)
            assert org is not None
            for name, value in values.items():
                setattr(org, name, value)

    async def test_off_refuses_unknown_people_and_creates_nobody(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        await self.set_org(database, world, provision_users=False)
        key = await integration(database, world, IdentityPreset.OPEN_WEBUI)
        r = await chat(harness, open_webui(key, user_id="uuid-off", email="off@corp.example"))
        assert r.status_code == 403, r.text
        assert await user_by_email(database, "off@corp.example") is None
        # The refusal is not remembered: once added, the person is served at once.
        async with database.transaction() as s:
            from tokendesk.accounts.users import create_user

            await create_user(s, organization_id=world.org_id, email="off@corp.example", name="Off")
        r = await chat(harness, open_webui(key, user_id="uuid-off", email="off@corp.example"))
        assert r.status_code == 200, r.text

    async def test_only_allowed_domains_are_provisioned(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        await self.set_org(database, world, provision_domains="corp.local,acme.internal")
        key = await integration(database, world, IdentityPreset.OPEN_WEBUI)
        ok = await chat(harness, open_webui(key, user_id="uuid-in", email="in@acme.internal"))
        assert ok.status_code == 200, ok.text
        out = await chat(harness, open_webui(key, user_id="uuid-out", email="out@gmail.example"))
        assert out.status_code == 403, out.text
        assert await user_by_email(database, "out@gmail.example") is None

    async def test_provisioned_people_join_the_default_team(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        await self.set_org(database, world, provision_team_id=world.team_a)
        key = await integration(database, world, IdentityPreset.OPEN_WEBUI)
        r = await chat(harness, open_webui(key, user_id="uuid-team", email="teamed@corp.example"))
        assert r.status_code == 200, r.text
        teamed = await user_by_email(database, "teamed@corp.example")
        assert teamed is not None
        assert teamed.team_id == world.team_a
        async with database.transaction(write=False) as s:
            alpha = await s.get(Team, world.team_a)
        assert alpha is not None
        # The team's default allocation applies, as for anyone created in that team.
        assert (await balance_of(database, teamed.id)).allocation == alpha.default_allocation


class TestIntegrationKeyBounds:
    async def test_the_admin_api_refuses_an_integration_key(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        key = await integration(database, world, IdentityPreset.OPEN_WEBUI)
        for path in ("/api/v1/me", "/api/v1/users", "/api/v1/token-requests"):
            r = await harness.http.get(path, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 403, (path, r.text)
            assert "integration key" in r.json()["detail"]

    async def test_a_revoked_integration_stops_at_once(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        key = await integration(database, world, IdentityPreset.OPEN_WEBUI)
        headers = open_webui(key, user_id="uuid-rev", email=world.alice.email)
        assert (await chat(harness, headers)).status_code == 200
        async with database.transaction(write=False) as s:
            from tokendesk.accounts.models import Integration

            integration_id = await s.scalar(select(Integration.id))
        from tokendesk.accounts.actor import Actor
        from tokendesk.accounts.integrations import revoke_integration
        from tokendesk.accounts.models import Role

        admin = Actor(
            user_id=world.admin.id,
            email=world.admin.email,
            name="Admin",
            role=Role.ORG_ADMIN,
            organization_id=world.org_id,
            home_organization_id=world.org_id,
            team_id=None,
            owned_team_ids=frozenset(),
        )
        async with database.transaction() as s:
            assert integration_id is not None
            await revoke_integration(s, actor=admin, integration_id=integration_id)
        await asyncio.sleep(0)
        refused = await chat(harness, headers)
        assert refused.status_code == 401, refused.text
