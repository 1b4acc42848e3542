"""The prompt estimate counts everything the upstream bills as input."""

from __future__ import annotations

import json

from tests.factories import World
from tests.gateway.conftest import Harness
from tests.gateway.test_gateway import body
from tests.ledger_support import balance_of
from tokendesk.db import Database
from tokendesk.gateway.tokens import IMAGE_TOKENS, IMAGE_TOKENS_LOW, prompt_tokens, text_tokens

QUESTION = [{"role": "user", "content": "What is the weather in Berlin?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_weather",
        "description": "The forecast for a city, day by day. " * 20,
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


class TestPromptTokens:
    def test_tool_definitions_are_counted(self) -> None:
        estimate = prompt_tokens(QUESTION, {"tools": [WEATHER_TOOL]})
        assert estimate == prompt_tokens(QUESTION) + text_tokens(compact([WEATHER_TOOL]))

    def test_legacy_function_definitions_are_counted(self) -> None:
        functions = [WEATHER_TOOL["function"]]
        estimate = prompt_tokens(QUESTION, {"functions": functions})
        assert estimate == prompt_tokens(QUESTION) + text_tokens(compact(functions))

    def test_tool_calls_and_tool_results_are_counted(self) -> None:
        call = {
            "id": "call_1",
            "type": "function",
            "function": {"name": "lookup_weather", "arguments": '{"city": "Berlin"}' * 10},
        }
        result = "Sunny, 21 degrees, light wind from the west. " * 10
        conversation = [
            *QUESTION,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": result},
        ]
        assert prompt_tokens(conversation) >= (
            prompt_tokens(QUESTION) + text_tokens(compact([call])) + text_tokens(result)
        )

    def test_a_predicted_output_is_counted(self) -> None:
        # Its rejected tokens are billed as completion whatever the budget.
        prediction = {"type": "content", "content": "The forecast for Berlin. " * 40}
        estimate = prompt_tokens(QUESTION, {"prediction": prediction})
        assert estimate == prompt_tokens(QUESTION) + text_tokens(compact(prediction))

    def test_images_are_counted_by_their_detail(self) -> None:
        def image(detail: str | None) -> list[dict[str, object]]:
            url: dict[str, object] = {"url": "https://example.invalid/cat.png"}
            if detail is not None:
                url["detail"] = detail
            parts = [{"type": "text", "text": "What is this?"}]
            return [{"role": "user", "content": [*parts, {"type": "image_url", "image_url": url}]}]

        text_only = prompt_tokens([{"role": "user", "content": "What is this?"}])
        assert prompt_tokens(image("low")) == text_only + IMAGE_TOKENS_LOW
        assert prompt_tokens(image(None)) == text_only + IMAGE_TOKENS
        assert prompt_tokens(image("high")) == text_only + IMAGE_TOKENS

    def test_text_in_wide_scripts_counts_a_token_per_character(self) -> None:
        assert text_tokens("你好" * 100) == 200
        assert text_tokens("héllo") == 2  # four narrow characters and one wide


class TestHold:
    async def test_tool_definitions_count_against_the_balance(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        # nora has 5,000 tokens; the question fits, a catalogue of 40 tools does not.
        tools = [WEATHER_TOOL] * 40
        r = await harness.http.post(
            "/v1/chat/completions",
            json={**body("fast", max_tokens=100), "messages": QUESTION, "tools": tools},
            headers=world.nora.headers,
        )
        assert r.status_code == 429, r.text
        assert harness.upstream.bodies == []
        assert (await balance_of(database, world.nora.id)).reserved == 0

    async def test_a_predicted_output_counts_against_the_balance(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        # nora has 5,000 tokens; a prediction of some 25,000 tokens is not held in them.
        prediction = {"type": "content", "content": "x" * 100_000}
        r = await harness.http.post(
            "/v1/chat/completions",
            json={**body("fast", max_tokens=100), "messages": QUESTION, "prediction": prediction},
            headers=world.nora.headers,
        )
        assert r.status_code == 429, r.text
        assert harness.upstream.bodies == []
        assert (await balance_of(database, world.nora.id)).reserved == 0
