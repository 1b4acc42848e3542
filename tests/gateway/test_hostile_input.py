"""Bodies a hostile client sends to the gateway: each is a 400 naming its field, and
nothing is held or sent upstream."""

from __future__ import annotations

import pytest

from tests.factories import World
from tests.gateway.conftest import Harness
from tests.gateway.test_budget import unchanged
from tests.gateway.test_gateway import body
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


class TestStreamFlag:
    @pytest.mark.parametrize("stream", ["false", "yes", 1, 0, [], {}])
    async def test_stream_that_is_not_a_boolean_is_refused(
        self, harness: Harness, world: World, database: Database, stream: object
    ) -> None:
        # An upstream may read "false" as false while tokendesk reads it as a stream
        # (or the reverse): the reply would then be relayed, and charged, as neither.
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast", stream=stream), headers=world.alice.headers
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "stream"
        await unchanged(harness, database, world.alice.id)

    async def test_stream_null_is_no_stream(self, harness: Harness, world: World) -> None:
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast", stream=None), headers=world.alice.headers
        )
        assert r.status_code == 200, r.text
        assert r.json()["object"] == "chat.completion"


class TestFieldsThatOutgrowTheHold:
    @pytest.mark.parametrize(
        ("field", "value"),
        [("best_of", 20), ("best_of", 1), ("extra_body", {"max_tokens": 100_000, "n": 50})],
    )
    async def test_field_is_refused_naming_it(
        self, harness: Harness, world: World, database: Database, field: str, value: object
    ) -> None:
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast", **{field: value}), headers=world.alice.headers
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == field
        await unchanged(harness, database, world.alice.id)
