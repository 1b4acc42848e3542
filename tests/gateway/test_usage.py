"""What a call is charged when the upstream's usage is missing, malformed, absurd or
beyond the hold, and what a cut stream counts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

from tests.factories import World
from tests.gateway.conftest import Harness
from tests.gateway.test_gateway import MESSAGES, body, consistent, sse_data
from tests.ledger_support import balance_of
from tokendesk.accounts.keycache import KeyOwner
from tokendesk.accounts.models import Role
from tokendesk.audit.models import AuditEntry
from tokendesk.bounds import MAX_EVENT_TOKENS
from tokendesk.db import Database
from tokendesk.gateway.budget import parse_chat
from tokendesk.gateway.completion import Completion
from tokendesk.gateway.tokens import prompt_tokens, text_tokens
from tokendesk.notifications.models import Notification, OrgNotificationSettings

PROMPT = prompt_tokens(MESSAGES)


class TestOverrun:
    async def test_usage_beyond_the_hold_is_charged_recorded_and_counted(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        # An upstream that ignored the budget it was sent (100) and wrote 900 tokens.
        harness.upstream.usage = {"prompt_tokens": 11, "completion_tokens": 900}
        harness.upstream.deltas = [{"content": "x" * 3600}]
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast"), headers=world.alice.headers
        )
        assert r.status_code == 200, r.text
        await harness.settled()
        after = await balance_of(database, world.alice.id)
        assert (after.used, after.reserved) == (911, 0)
        held = PROMPT + 100
        assert (harness.gateway.overruns.calls, harness.gateway.overruns.tokens) == (
            1,
            911 - held,
        )
        async with database.transaction(write=False) as session:
            [entry] = (
                await session.scalars(
                    select(AuditEntry).where(AuditEntry.action == "gateway.overrun")
                )
            ).all()
        assert entry.target_id == str(world.alice.id)
        assert (entry.details["held"], entry.details["charged"]) == (held, 911)
        await consistent(database)

    async def test_usage_within_the_hold_is_no_overrun(
        self, harness: Harness, world: World
    ) -> None:
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast"), headers=world.alice.headers
        )
        assert r.status_code == 200
        await harness.settled()
        assert harness.gateway.overruns.calls == 0

    async def test_a_charge_past_what_one_usage_event_holds_is_charged_at_that_cap(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        # Believable usage can exceed one event's cap on a heavily weighted model with a
        # large hold; the ledger would refuse such an event and the call would go free.
        gateway = harness.gateway
        chat = parse_chat(body("fast"), gateway.models)
        hold = await gateway.holds.hold(
            user_id=world.alice.id, organization_id=world.org_id, amount=100
        )
        caller = KeyOwner(world.alice.id, world.org_id, Role.MEMBER, world.alice.email)
        call = Completion(gateway, caller, chat, hold.id, held=hold.amount)
        call.settle(2 * MAX_EVENT_TOKENS, MAX_EVENT_TOKENS)
        await harness.settled()
        after = await balance_of(database, world.alice.id)
        assert (after.used, after.reserved) == (MAX_EVENT_TOKENS, 0)
        assert gateway.overruns.calls == 1
        await consistent(database)


UNUSABLE = [
    {"prompt_tokens": "11", "completion_tokens": "13"},
    {"prompt_tokens": -5, "completion_tokens": -13},
    {"prompt_tokens": 11, "completion_tokens": -13},
    {"prompt_tokens": 11, "completion_tokens": 10**12},
    # The reply's 55 characters count 14 tokens: one is more than ten times too few.
    {"prompt_tokens": 11, "completion_tokens": 1},
    {"prompt_tokens": 11, "completion_tokens": 1.5},
    {"prompt_tokens": 11, "completion_tokens": True},
    {"prompt_tokens": 0, "completion_tokens": 0},
    {"prompt_tokens": 11},
    ["not", "a", "dict"],
    "lots",
    7,
]


class TestUnusableUsage:
    async def test_usage_below_the_reply_yet_within_a_tenth_of_it_is_believed(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        # Tokenizers differ from the count of four characters a token: 2 for 14 is taken.
        harness.upstream.usage = {"prompt_tokens": 11, "completion_tokens": 2}
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast"), headers=world.alice.headers
        )
        assert r.status_code == 200, r.text
        await harness.settled()
        after = await balance_of(database, world.alice.id)
        assert (after.used, after.reserved) == (13, 0)
        assert harness.gateway.overruns.unusable_usage == 0

    @pytest.mark.parametrize("usage", UNUSABLE)
    async def test_whole_reply_is_charged_its_text_and_the_prompt_estimate(
        self, harness: Harness, world: World, database: Database, usage: Any
    ) -> None:
        harness.upstream.usage = usage
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast"), headers=world.alice.headers
        )
        assert r.status_code == 200, r.text
        await harness.settled()
        content = r.json()["choices"][0]["message"]["content"]
        after = await balance_of(database, world.alice.id)
        assert (after.used, after.reserved) == (PROMPT + text_tokens(content), 0)
        assert harness.gateway.overruns.unusable_usage == 1
        await consistent(database)

    @pytest.mark.parametrize("usage", UNUSABLE)
    async def test_stream_is_charged_its_text_and_the_prompt_estimate(
        self, harness: Harness, world: World, database: Database, usage: Any
    ) -> None:
        harness.upstream.usage = usage
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast", stream=True), headers=world.alice.headers
        )
        assert r.status_code == 200
        chunks = [json.loads(d) for d in sse_data(r.text) if d != "[DONE]"]
        delivered = "".join(
            c["choices"][0]["delta"].get("content", "") for c in chunks if c.get("choices")
        )
        await harness.settled()
        after = await balance_of(database, world.alice.id)
        assert (after.used, after.reserved) == (PROMPT + text_tokens(delivered), 0)

    @pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b'{"choices": "none", "usage": 5}'])
    async def test_reply_of_the_wrong_shape_is_charged_the_prompt_estimate(
        self, harness: Harness, world: World, database: Database, raw: bytes
    ) -> None:
        harness.upstream.raw = raw
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast"), headers=world.alice.headers
        )
        assert r.status_code == 200
        await harness.settled()
        after = await balance_of(database, world.alice.id)
        assert (after.used, after.reserved) == (PROMPT, 0)

    async def test_reply_nested_too_deep_to_read_releases_the_hold(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        harness.upstream.raw = b"[" * 100_000 + b"]" * 100_000
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast"), headers=world.alice.headers
        )
        assert r.status_code == 502, r.text
        assert r.json()["error"]["type"] == "upstream_error"
        await harness.settled()
        after = await balance_of(database, world.alice.id)
        assert (after.used, after.reserved) == (0, 0)

    async def test_stream_chunk_nested_too_deep_is_skipped_and_the_rest_charged(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        words = {"choices": [{"index": 0, "delta": {"content": "one two three"}}]}
        harness.upstream.raw = (
            f"data: {json.dumps(words)}\n\n".encode()
            + b"data: "
            + b"[" * 100_000
            + b"]" * 100_000
            + b"\n\ndata: [DONE]\n\n"
        )
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast", stream=True), headers=world.alice.headers
        )
        assert r.status_code == 200
        assert sse_data(r.text)[-1] == "[DONE]"
        await harness.settled()
        after = await balance_of(database, world.alice.id)
        assert (after.used, after.reserved) == (PROMPT + text_tokens("one two three"), 0)


TOOL_CALL = {
    "tool_calls": [
        {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "lookup_weather", "arguments": '{"city": "Berlin"'},
        }
    ]
}
MORE_ARGUMENTS = {"tool_calls": [{"index": 0, "function": {"arguments": ', "days": 14}'}}]}
REASONING = {"reasoning_content": "The user wants the weather, so I call the tool. " * 4}
REFUSAL = {"refusal": "I will not say more than that about the weather."}


class TestCutStream:
    async def test_cut_stream_counts_tool_calls_reasoning_and_refusals(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        # The stream breaks off before its last delta.
        harness.upstream.deltas = [REASONING, TOOL_CALL, MORE_ARGUMENTS, REFUSAL, {"content": "x"}]
        r = await harness.http.post(
            "/v1/chat/completions", json=body("drop", stream=True), headers=world.alice.headers
        )
        assert json.loads(sse_data(r.text)[-1])["error"]["type"] == "upstream_error"
        await harness.settled()
        delivered = (
            REASONING["reasoning_content"]
            + "lookup_weather"
            + '{"city": "Berlin"'
            + ', "days": 14}'
            + REFUSAL["refusal"]
        )
        after = await balance_of(database, world.alice.id)
        assert after.used == PROMPT + text_tokens(delivered)
        assert after.reserved == 0
        await consistent(database)

    async def test_whole_reply_without_usage_counts_its_tool_calls(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        harness.upstream.usage = None
        harness.upstream.deltas = [{"content": None, **TOOL_CALL}]
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast"), headers=world.alice.headers
        )
        assert r.status_code == 200
        await harness.settled()
        after = await balance_of(database, world.alice.id)
        assert after.used == PROMPT + text_tokens('lookup_weather{"city": "Berlin"')


class TestBalanceAlerts:
    async def test_a_call_whose_settlement_crosses_a_threshold_queues_the_members_email(
        self, harness: Harness, database: Database, world: World
    ) -> None:
        # Nora has 5,000 tokens; each call costs 24: the third takes her past 1% (50).
        async with database.transaction() as s:
            s.add(OrgNotificationSettings(organization_id=world.org_id, usage_thresholds="1"))
        for _ in range(3):
            r = await harness.http.post(
                "/v1/chat/completions",
                json={"model": "fast", "messages": [{"role": "user", "content": "hi"}]},
                headers=world.nora.headers,
            )
            assert r.status_code == 200, r.text
            await harness.settled()
        async with database.transaction(write=False) as s:
            rows = list(await s.scalars(select(Notification)))
        assert [(n.kind, n.user_id, (n.details or {})["used"]) for n in rows] == [
            ("balance.threshold", world.nora.id, 72)
        ]
