"""Where a chat app's user stands: ``GET /v1/tokendesk/balance``, and the headers every
gateway reply carries (tokens left, next reset, and under the threshold the flag and
the person's request link)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from tests.factories import World
from tests.gateway.conftest import Harness
from tests.gateway.test_integrations import integration, open_webui
from tests.ledger_support import balance_of
from tokendesk.accounts.models import IdentityPreset, User
from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.ledger.models import Reservation
from tokendesk.metering.service import UsageInput, record_usage
from tokendesk.token_requests.links import read_link

BALANCE = "/v1/tokendesk/balance"
PUBLIC = {"public_url": "https://tokens.example.com"}
STANDING = ("x-tokendesk-remaining", "x-tokendesk-reset-at")
LOW = ("x-tokendesk-low-balance", "x-tokendesk-request-link")


def chat(model: str = "fast", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], **extra}


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def link_user(settings: Settings, link: str) -> int:
    return read_link(settings, link.rsplit("/", 1)[1]).user_id


async def last_hold(database: Database, user_id: int) -> int:
    async with database.transaction(write=False) as s:
        amount = await s.scalar(
            select(Reservation.amount)
            .where(Reservation.user_id == user_id)
            .order_by(Reservation.id.desc())
            .limit(1)
        )
    assert amount is not None
    return amount


async def spend(database: Database, world: World, user_id: int, tokens: int) -> None:
    """Usage reported elsewhere: what the period gives stays, what is left shrinks."""
    async with database.transaction() as s:
        await record_usage(
            s,
            organization_id=world.org_id,
            events=[UsageInput(f"elsewhere-{user_id}", user_id, "fast", tokens, 0)],
        )


async def count_users(database: Database) -> int:
    async with database.transaction(write=False) as s:
        return int(await s.scalar(select(func.count()).select_from(User)) or 0)


class TestBalanceEndpoint:
    async def test_a_personal_key_reads_its_owners_balance(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        response = await harness.http.get(BALANCE, headers=world.alice.headers)
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        data = response.json()
        balance = await balance_of(database, world.alice.id)
        assert data["user_id"] == world.alice.id and data["email"] == "alice@example.com"
        assert (data["remaining"], data["allocation"], data["limit"], data["used"]) == (
            50_000,
            50_000,
            50_000,
            0,
        )
        assert data["reset_at"] == iso(balance.period_end)
        assert (data["low"], data["low_balance_percent"]) == (False, 20)
        assert data["pending_request"] is None
        # Absolute, under the address the caller reached tokendesk at.
        assert data["request_link"].startswith("http://test/ask/")
        assert link_user(harness.gateway.settings, data["request_link"]) == world.alice.id

    async def test_under_the_threshold_the_balance_is_low(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        await spend(database, world, world.nora.id, 4_100)  # 900 of 5,000: under 20 %
        data = (await harness.http.get(BALANCE, headers=world.nora.headers)).json()
        assert (data["remaining"], data["low"]) == (900, True)

    async def test_a_pending_request_is_shown(self, harness: Harness, world: World) -> None:
        sent = await harness.http.post(
            "/api/v1/token-requests",
            json={"amount": 7_000, "reason": "a long report"},
            headers=world.bob.headers,
        )
        assert sent.status_code == 201, sent.text
        data = (await harness.http.get(BALANCE, headers=world.bob.headers)).json()
        assert data["pending_request"] == {"id": sent.json()["id"], "amount": 7_000}

    @pytest.mark.parametrize("harness", [PUBLIC], indirect=True)
    async def test_under_a_public_url_the_link_is_under_it(
        self, harness: Harness, world: World
    ) -> None:
        data = (await harness.http.get(BALANCE, headers=world.alice.headers)).json()
        assert data["request_link"].startswith("https://tokens.example.com/ask/")

    async def test_an_integration_key_reads_the_balance_of_the_person_it_names(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        key = await integration(database, world, IdentityPreset.OPEN_WEBUI)
        headers = open_webui(key, user_id="owui-alice", email="alice@example.com")
        data = (await harness.http.get(BALANCE, headers=headers)).json()
        assert (data["user_id"], data["remaining"]) == (world.alice.id, 50_000)

    async def test_a_new_person_is_provisioned_as_on_a_chat_call(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        key = await integration(database, world, IdentityPreset.OPEN_WEBUI)
        before = await count_users(database)
        headers = open_webui(key, user_id="owui-zed", email="zed@example.com", name="Zed")
        response = await harness.http.get(BALANCE, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["email"] == "zed@example.com"
        assert response.json()["remaining"] == 100_000  # the organization's default
        assert await count_users(database) == before + 1

    async def test_an_integration_key_that_names_nobody_is_refused_and_nothing_written(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        key = await integration(database, world, IdentityPreset.OPEN_WEBUI)
        before = await count_users(database)
        response = await harness.http.get(BALANCE, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "x-openwebui-user-id"
        assert await count_users(database) == before

    async def test_librechat_names_its_user_in_the_query(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        key = await integration(database, world, IdentityPreset.LIBRECHAT)
        auth = {"Authorization": f"Bearer {key}"}
        first = await harness.http.get(
            BALANCE,
            params={"user": "65f1c0ffee0000000000beef"},
            headers={**auth, "X-LibreChat-User-Email": world.nora.email},
        )
        assert first.status_code == 200, first.text
        # Linked now: the id alone is enough, as on a chat call.
        again = await harness.http.get(
            BALANCE, params={"user": "65f1c0ffee0000000000beef"}, headers=auth
        )
        assert again.json()["user_id"] == first.json()["user_id"] == world.nora.id

    async def test_an_unknown_key_is_refused(self, harness: Harness) -> None:
        response = await harness.http.get(
            BALANCE, headers={"Authorization": "Bearer tdk_not-a-real-key"}
        )
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"


class TestReplyHeaders:
    async def test_a_reply_says_what_is_left_after_the_hold_and_when_it_resets(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        response = await harness.http.post(
            "/v1/chat/completions", json=chat(), headers=world.alice.headers
        )
        assert response.status_code == 200, response.text
        held = await last_hold(database, world.alice.id)
        balance = await balance_of(database, world.alice.id)
        assert response.headers["x-tokendesk-remaining"] == str(50_000 - held)
        assert response.headers["x-tokendesk-reset-at"] == iso(balance.period_end)
        assert not any(name in response.headers for name in LOW)

    async def test_under_the_threshold_a_reply_flags_it_with_the_request_link(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        await spend(database, world, world.nora.id, 4_100)
        response = await harness.http.post(
            "/v1/chat/completions", json=chat(), headers=world.nora.headers
        )
        assert response.status_code == 200, response.text
        held = await last_hold(database, world.nora.id)
        assert response.headers["x-tokendesk-remaining"] == str(900 - held)
        assert response.headers["x-tokendesk-low-balance"] == "true"
        link = response.headers["x-tokendesk-request-link"]
        assert link.startswith("http://test/ask/")
        assert link_user(harness.gateway.settings, link) == world.nora.id

    async def test_a_streamed_reply_carries_the_same_headers(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        await spend(database, world, world.nora.id, 4_100)
        async with harness.http.stream(
            "POST", "/v1/chat/completions", json=chat(stream=True), headers=world.nora.headers
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            headers = dict(response.headers)
            await response.aread()
        held = await last_hold(database, world.nora.id)
        assert headers["x-tokendesk-remaining"] == str(900 - held)
        assert headers["x-tokendesk-low-balance"] == "true"
        assert link_user(harness.gateway.settings, headers["x-tokendesk-request-link"]) == (
            world.nora.id
        )

    async def test_a_failed_upstream_call_carries_none(
        self, harness: Harness, world: World
    ) -> None:
        response = await harness.http.post(
            "/v1/chat/completions", json=chat("error"), headers=world.alice.headers
        )
        assert response.status_code >= 400
        assert not any(name in response.headers for name in (*STANDING, *LOW))

    async def test_a_chat_apps_user_gets_their_own_figures(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        key = await integration(database, world, IdentityPreset.OPEN_WEBUI)
        headers = open_webui(key, user_id="owui-nora", email="nora@example.com")
        await spend(database, world, world.nora.id, 4_100)
        response = await harness.http.post("/v1/chat/completions", json=chat(), headers=headers)
        assert response.status_code == 200, response.text
        held = await last_hold(database, world.nora.id)
        assert response.headers["x-tokendesk-remaining"] == str(900 - held)
        assert response.headers["x-tokendesk-low-balance"] == "true"

    async def test_a_changed_threshold_reaches_the_headers_once_the_cache_expires(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        first = await harness.http.post(
            "/v1/chat/completions", json=chat(), headers=world.alice.headers
        )
        assert "x-tokendesk-low-balance" not in first.headers
        patched = await harness.http.patch(
            "/api/v1/organization",
            json={"low_balance_percent": 100},
            headers=world.admin.headers,
        )
        assert patched.status_code == 200, patched.text
        harness.gateway.thresholds._entries.clear()  # as if its lifetime had passed
        second = await harness.http.post(
            "/v1/chat/completions", json=chat(), headers=world.alice.headers
        )
        assert second.headers["x-tokendesk-low-balance"] == "true"
