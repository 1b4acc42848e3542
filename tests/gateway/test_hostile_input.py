"""Bodies a hostile client sends to the gateway: each is a 400 naming its field, and
nothing is held or sent upstream."""

from __future__ import annotations

from tests.factories import World
from tests.gateway.conftest import Harness
from tests.gateway.test_budget import unchanged
from tokendesk.db import Database

# Deeper than the JSON parser can follow without running out of stack.
TOO_DEEP = b"[" * 100_000 + b"]" * 100_000


class TestUnreadableBody:
    async def test_body_nested_too_deep_is_refused_as_invalid_json(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        content = b'{"model": "fast", "messages": [{"role": "user", "content": ' + TOO_DEEP + b"}]}"
        r = await harness.http.post(
            "/v1/chat/completions",
            content=content,
            headers={**world.alice.headers, "content-type": "application/json"},
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "body"
        await unchanged(harness, database, world.alice.id)
