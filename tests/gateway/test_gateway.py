"""The metered gateway against a fake OpenAI-compatible upstream on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tests.factories import World
from tests.gateway.conftest import Harness
from tests.ledger_support import balance_of
from tests.serving import serving
from tokendesk.accounts.keycache import CREDENTIALS_CHANGED
from tokendesk.app import create_app
from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.events.bus import EventBus, InProcessBus
from tokendesk.gateway.tokens import prompt_tokens, text_tokens
from tokendesk.ledger import service as ledger
from tokendesk.ledger.doctor import check_balances
from tokendesk.ledger.models import EntryKind

MESSAGES = [{"role": "user", "content": "Say hello"}]


async def consistent(database: Database) -> None:
    async with database.transaction(write=False) as s:
        assert await check_balances(s) == []


def body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, **extra}


def sse_data(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


class TestNonStreaming:
    async def test_reported_usage_is_debited_exactly(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        before = await balance_of(database, world.alice.id)
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast"), headers=world.alice.headers
        )
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"].startswith("Hello")
        await harness.settled()
        after = await balance_of(database, world.alice.id)
        assert after.used - before.used == 24
        assert after.reserved == 0
        await consistent(database)

    async def test_model_weight_multiplies_the_debit(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        r = await harness.http.post(
            "/v1/chat/completions", json=body("heavy"), headers=world.alice.headers
        )
        assert r.status_code == 200, r.text
        await harness.settled()
        assert (await balance_of(database, world.alice.id)).used == 60  # 24 x 2.5

    async def test_missing_usage_is_counted_from_the_delivered_text(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        r = await harness.http.post(
            "/v1/chat/completions", json=body("nousage"), headers=world.alice.headers
        )
        assert r.status_code == 200
        await harness.settled()
        content = r.json()["choices"][0]["message"]["content"]
        expected = prompt_tokens(MESSAGES) + text_tokens(content)
        assert (await balance_of(database, world.alice.id)).used == expected

    async def test_member_key_is_never_forwarded_upstream(
        self, harness: Harness, world: World
    ) -> None:
        await harness.http.post(
            "/v1/chat/completions", json=body("fast"), headers=world.alice.headers
        )
        assert harness.upstream.authorizations == ["Bearer sk-upstream-secret"]
        assert harness.upstream.bodies[0].get("user") is None


class TestFailures:
    async def test_upstream_error_releases_the_hold_and_charges_nothing(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        r = await harness.http.post(
            "/v1/chat/completions", json=body("error"), headers=world.alice.headers
        )
        assert r.status_code == 500
        await harness.settled()
        after = await balance_of(database, world.alice.id)
        assert (after.used, after.reserved) == (0, 0)
        await consistent(database)

    async def test_upstream_timeout_releases_the_hold(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        r = await harness.http.post(
            "/v1/chat/completions", json=body("slow"), headers=world.alice.headers
        )
        assert r.status_code == 502
        assert r.json()["error"]["type"] == "upstream_error"
        after = await balance_of(database, world.alice.id)
        assert (after.used, after.reserved) == (0, 0)

    async def test_stream_dropped_midway_charges_only_what_was_delivered(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        r = await harness.http.post(
            "/v1/chat/completions", json=body("drop", stream=True), headers=world.alice.headers
        )
        chunks = [json.loads(d) for d in sse_data(r.text) if d != "[DONE]"]
        delivered = "".join(
            c["choices"][0]["delta"].get("content", "") for c in chunks if c.get("choices")
        )
        assert chunks[-1]["error"]["type"] == "upstream_error"
        await harness.settled()
        after = await balance_of(database, world.alice.id)
        assert after.used == prompt_tokens(MESSAGES) + text_tokens(delivered)
        assert after.reserved == 0
        await consistent(database)

    async def test_unknown_model_is_a_404_in_openai_shape(
        self, harness: Harness, world: World
    ) -> None:
        r = await harness.http.post(
            "/v1/chat/completions", json=body("nope"), headers=world.alice.headers
        )
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "model_not_found"

    async def test_bad_max_tokens_names_the_parameter(self, harness: Harness, world: World) -> None:
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast", max_tokens=-1), headers=world.alice.headers
        )
        assert r.status_code == 400
        assert "max_tokens" in r.json()["error"]["message"]

    async def test_bad_key_is_refused(self, harness: Harness, world: World) -> None:
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast"), headers={"Authorization": "Bearer td_wrong"}
        )
        assert r.status_code == 401


class TestStreaming:
    async def test_stream_with_usage_debits_the_reported_usage(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast", stream=True), headers=world.alice.headers
        )
        data = sse_data(r.text)
        assert data[-1] == "[DONE]"
        # The gateway asked for usage; the client did not, so the usage-only chunk is hidden.
        assert all(json.loads(d).get("choices") for d in data[:-1])
        assert harness.upstream.bodies[0]["stream_options"] == {"include_usage": True}
        await harness.settled()
        assert (await balance_of(database, world.alice.id)).used == 24

    async def test_client_asking_for_usage_gets_the_usage_chunk(
        self, harness: Harness, world: World
    ) -> None:
        r = await harness.http.post(
            "/v1/chat/completions",
            json=body("fast", stream=True, stream_options={"include_usage": True}),
            headers=world.alice.headers,
        )
        usage = [
            json.loads(d)["usage"] for d in sse_data(r.text)[:-1] if json.loads(d).get("usage")
        ]
        assert usage == [{"prompt_tokens": 11, "completion_tokens": 13, "total_tokens": 24}]

    async def test_stream_without_usage_is_counted_from_delivered_text(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        r = await harness.http.post(
            "/v1/chat/completions", json=body("nousage", stream=True), headers=world.alice.headers
        )
        delivered = "".join(
            json.loads(d)["choices"][0]["delta"].get("content", "") for d in sse_data(r.text)[:-1]
        )
        await harness.settled()
        used = (await balance_of(database, world.alice.id)).used
        assert used == prompt_tokens(MESSAGES) + text_tokens(delivered)


class TestBudget:
    async def test_empty_balance_gets_429_insufficient_quota_with_the_way_out(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        # nora has 5,000 tokens; ask for a completion budget beyond that.
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast", max_tokens=6000), headers=world.nora.headers
        )
        assert r.status_code == 429
        error = r.json()["error"]
        assert error["type"] == "insufficient_quota"
        assert "5000 left" in error["message"]
        assert error["message"].startswith("Not enough tokens: 5000 left")
        assert "Ask for more tokens here: /ask/" in error["message"]
        # One way to ask for more: the link, not also the advice meant for the API.
        assert "token request" not in error["message"]
        assert harness.upstream.bodies == []
        after = await balance_of(database, world.nora.id)
        assert (after.used, after.reserved) == (0, 0)

    async def test_demo_model_is_listed_only_without_upstreams(
        self, harness: Harness, world: World
    ) -> None:
        r = await harness.http.get("/v1/models", headers=world.alice.headers)
        names = [m["id"] for m in r.json()["data"]]
        assert "demo" not in names and "fast" in names


# How long the credentials event may take to arrive before the test fails: far beyond
# the one hop it takes after the change's commit.
WITHIN = 5.0


@contextlib.asynccontextmanager
async def credentials_heard(bus: EventBus) -> AsyncIterator[None]:
    """Wait, at the end of the block, for the credentials event the block caused. The
    gateway's listener was woken by the same delivery, so one turn of the event loop
    later it has forgotten its cached keys."""
    async with bus.subscribe(system=True) as queue:
        yield
        while (await asyncio.wait_for(queue.get(), WITHIN)).type != CREDENTIALS_CHANGED:
            pass
    await asyncio.sleep(0)


class TestKeyCache:
    async def test_revoked_key_stops_working_on_the_gateway_at_once(
        self, harness: Harness, world: World, bus: InProcessBus
    ) -> None:
        ok = await harness.http.post(
            "/v1/chat/completions", json=body("fast"), headers=world.alice.headers
        )
        assert ok.status_code == 200  # the key is now cached
        keys = await harness.http.get("/api/v1/me/api-keys", headers=world.alice.headers)
        key_id = keys.json()[0]["id"]
        async with credentials_heard(bus):  # the invalidation event is delivered after commit
            revoked = await harness.http.delete(
                f"/api/v1/me/api-keys/{key_id}", headers=world.alice.headers
            )
            assert revoked.status_code == 204, revoked.text
        refused = await harness.http.post(
            "/v1/chat/completions", json=body("fast"), headers=world.alice.headers
        )
        assert refused.status_code == 401

    async def test_deactivated_user_is_refused_by_the_gateway(
        self, harness: Harness, world: World, bus: InProcessBus
    ) -> None:
        await harness.http.post(
            "/v1/chat/completions", json=body("fast"), headers=world.bob.headers
        )
        async with credentials_heard(bus):
            r = await harness.http.patch(
                f"/api/v1/users/{world.bob.id}",
                json={"is_active": False},
                headers=world.admin.headers,
            )
            assert r.status_code == 200, r.text
        refused = await harness.http.post(
            "/v1/chat/completions", json=body("fast"), headers=world.bob.headers
        )
        assert refused.status_code == 401


class TestTrustedHeader:
    async def test_proxy_with_an_admin_key_may_name_the_member(
        self, database: Database, db_url: str, world: World, upstream: tuple[Any, str]
    ) -> None:
        _, url = upstream
        app = create_app(
            Settings(
                database_url=db_url,
                demo=True,
                scheduler_enabled=False,
                models=json.dumps([{"name": "fast", "base_url": f"{url}/v1"}]),
                trusted_user_header="X-OpenWebUI-User-Email",
            ),
            database=database,
        )
        transport = httpx.ASGITransport(app=app)
        async with (
            serving(app),
            httpx.AsyncClient(transport=transport, base_url="http://t") as http,
        ):
            as_alice = {**world.admin.headers, "X-OpenWebUI-User-Email": world.alice.email}
            r = await http.post("/v1/chat/completions", json=body("fast"), headers=as_alice)
            assert r.status_code == 200, r.text
            # A member's key cannot speak for someone else.
            as_bob = {**world.alice.headers, "X-OpenWebUI-User-Email": world.bob.email}
            refused = await http.post("/v1/chat/completions", json=body("fast"), headers=as_bob)
            assert refused.status_code == 403
        assert (await balance_of(database, world.alice.id)).used == 24
        assert (await balance_of(database, world.admin.id)).used == 0


class TestLastUsed:
    async def test_gateway_calls_stamp_the_keys_last_use(
        self, harness: Harness, world: World
    ) -> None:
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast"), headers=world.nora.headers
        )
        assert r.status_code == 200
        await harness.settled()
        # Read through the admin's key: nora's own REST call would stamp it by itself.
        keys = await harness.http.get(
            f"/api/v1/users/{world.nora.id}/api-keys", headers=world.admin.headers
        )
        assert keys.status_code == 200, keys.text
        assert keys.json()[0]["last_used_at"] is not None


class TestRefusal:
    """A call refused for lack of tokens tells the client whether waiting can help."""

    async def test_a_spent_balance_is_refused_without_retry_after_and_asks_not_to_retry(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        # nora's 5,000 tokens are taken away and nothing is held: waiting cannot help.
        async with database.transaction() as s:
            await ledger.credit(
                s,
                user_id=world.nora.id,
                kind=EntryKind.ADJUSTMENT,
                amount=-5_000,
                actor_id=None,
                reason="spent",
            )
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast", max_tokens=50), headers=world.nora.headers
        )
        assert r.status_code == 429
        assert "0 left" in r.json()["error"]["message"]
        assert "retry-after" not in r.headers
        assert r.headers["x-should-retry"] == "false"

    async def test_tokens_held_by_calls_in_flight_get_retry_after(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        # A call in flight holds 4,950 of nora's 5,000: once settled, most may come back.
        async with database.transaction() as s:
            await ledger.reserve(s, user_id=world.nora.id, amount=4_950)
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast", max_tokens=100), headers=world.nora.headers
        )
        assert r.status_code == 429
        assert "50 left" in r.json()["error"]["message"]
        assert r.headers["retry-after"] == "1"
        assert "x-should-retry" not in r.headers
