"""``POST /v1/responses``: OpenAI's Responses API, metered under the chat rules.

tokendesk sets ``max_output_tokens`` (which bounds reasoning too) from the hold, as
it sets chat's ``max_tokens``, so the hold covers the call: the prompt estimate
(input, instructions, tool definitions) plus that budget. Usage is read from the
reply's ``usage`` or, streamed, from the ``response.completed`` (or ``incomplete``
or ``failed``) event: input, output, cached and reasoning tokens.

A call with ``previous_response_id``, ``conversation`` or a stored ``prompt`` makes
the upstream add context the estimate cannot see. The reported usage settles it:
such a call may report up to ``HIDDEN_CONTEXT_TOKENS`` input tokens beyond the
usual bound and be believed, and what it costs past its hold is charged in full and
recorded as an overrun (audited), never waived. ``background: true`` is refused:
its usage arrives long after the reply, where tokendesk cannot settle it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from tokendesk.gateway import demo_model
from tokendesk.gateway.budget import (
    BadParameter,
    count_field,
    model_speaking,
    streamed,
)
from tokendesk.gateway.completion import (
    DEMO_DELAY_SECONDS,
    BudgetedCall,
    StreamReader,
    UsageNames,
    event_stream,
    loads,
)
from tokendesk.gateway.model_config import ModelConfig
from tokendesk.gateway.openapi import RESPONSES_BODY, RESPONSES_RESPONSES
from tokendesk.gateway.routes import serve_metered
from tokendesk.gateway.tokens import REPLY_PRIMING, prompt_tokens, text_tokens

if TYPE_CHECKING:
    from tokendesk.accounts.keycache import KeyOwner
    from tokendesk.gateway.routes import Gateway

router = APIRouter(prefix="/v1", tags=["gateway"])

RESPONSES_USAGE = UsageNames(
    "input_tokens",
    "output_tokens",
    ("input_tokens_details", "cached_tokens"),
    ("output_tokens_details", "reasoning_tokens"),
)
# Request fields the upstream reads as part of the prompt besides the input.
PROMPT_FIELDS = ("instructions", "tools", "tool_choice", "text")
# Fields that make the upstream add context tokendesk does not see.
HIDDEN_FIELDS = ("previous_response_id", "conversation", "prompt")
# Most items one input may hold (the body's size is bounded before this).
MAX_INPUT_ITEMS = 10_000
# Events whose ``delta`` is output the call is billed for: text, refusals, tool-call
# arguments and reasoning (never ``response.audio.delta``, base64 audio bytes).
DELTA_EVENTS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.audio.transcript.delta",
    }
)
# The events that end a response and carry its usage.
FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


@dataclass(frozen=True)
class ResponsesRequest:
    """A checked Responses API request."""

    body: dict[str, Any]
    model: ModelConfig
    # The input as messages (a string input is one user message).
    items: list[Any]
    requested: int | None
    stream: bool
    prompt: int
    hidden_context: bool
    n: int = 1


def parse_responses(body: Any, models: dict[str, ModelConfig]) -> ResponsesRequest:
    """Check a Responses API body; raises BadParameter or UnknownModel."""
    if not isinstance(body, dict):
        raise BadParameter("body", "the body must be a JSON object")
    model = model_speaking(body, models, "responses")
    hidden = any(body.get(field) is not None for field in HIDDEN_FIELDS)
    items = _items(body.get("input"), required=not hidden)
    for field, kind, types in (
        ("instructions", "a string", (str,)),
        ("previous_response_id", "a string", (str,)),
        ("conversation", "a string or an object", (str, dict)),
        ("prompt", "an object", (dict,)),
        ("tools", "a list", (list,)),
        ("reasoning", "an object", (dict,)),
        ("text", "an object", (dict,)),
    ):
        value = body.get(field)
        if value is not None and not isinstance(value, types):
            raise BadParameter(field, f"must be {kind}")
    if body.get("background") not in (None, False):
        raise BadParameter(
            "background", "not accepted: a background response's usage cannot be metered"
        )
    requested = count_field(
        body.get("max_output_tokens"),
        "max_output_tokens",
        most=model.max_output_tokens,
        limit="for this model",
    )
    return ResponsesRequest(
        body=body,
        model=model,
        items=items,
        requested=requested,
        stream=streamed(body),
        prompt=_estimate(items, body),
        hidden_context=hidden,
    )


def _items(value: Any, *, required: bool) -> list[Any]:
    if value is None and not required:
        return []
    if isinstance(value, str):
        if not value and required:
            raise BadParameter("input", "must not be empty")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or (required and not value):
        raise BadParameter("input", "required: a string or a non-empty list of input items")
    if len(value) > MAX_INPUT_ITEMS:
        raise BadParameter("input", f"at most {MAX_INPUT_ITEMS} items per call")
    if not all(isinstance(item, dict) for item in value):
        raise BadParameter("input", "each item must be an object (a message or another item)")
    return value


def _estimate(items: list[Any], body: dict[str, Any]) -> int:
    # Messages count by their content; other items (tool calls and their outputs,
    # reasoning) by their whole JSON, which errs high.
    messages = [item for item in items if "content" in item]
    others = [item for item in items if "content" not in item]
    total = prompt_tokens(messages, body, PROMPT_FIELDS)
    return total + sum(REPLY_PRIMING + text_tokens(json.dumps(item)) for item in others)


class ResponseCall(BudgetedCall[ResponsesRequest]):
    """One metered Responses API call."""

    endpoint = "responses"
    usage_names = RESPONSES_USAGE

    def __init__(
        self,
        gateway: Gateway,
        caller: KeyOwner,
        request: ResponsesRequest,
        hold_id: int,
        *,
        held: int,
    ) -> None:
        super().__init__(gateway, caller, request, hold_id, held=held)
        self.hidden_context = request.hidden_context

    async def upstream(self) -> Response:
        payload = dict(self.request.body)
        payload["model"] = self.model.upstream_model or self.model.name
        payload.pop("user", None)
        payload["max_output_tokens"] = self.budget
        response = await self.post(payload)
        if isinstance(response, Response):
            return response
        if self.request.stream:
            return event_stream(self.relay(response, ResponseEvents()))
        read = await self.read_json(response)
        if isinstance(read, Response):
            return read
        content, data = read
        data = data if isinstance(data, dict) else {}
        self.settle_delivered(data.get("usage"), "".join(output_texts(data.get("output"))))
        return Response(content=content, media_type="application/json")

    # -- the built-in demo model ---------------------------------------------------------

    async def demo(self) -> Response:
        reply = demo_model.compose_reply(self.request.items, self.budget)
        completion = text_tokens(reply)
        usage = {
            "input_tokens": self.estimate_prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.estimate_prompt + completion,
        }
        shape = DemoResponse(self, int(time.time()))
        if not self.request.stream:
            self.settle(self.estimate_prompt, completion)
            return JSONResponse(shape.response("completed", [shape.message(reply)], usage))

        async def events() -> AsyncIterator[str]:
            delivered = ""
            try:
                for event in shape.opening():
                    yield event
                for piece in demo_model.chunks(reply):
                    delivered += piece
                    self.first_output()
                    yield shape.event("response.output_text.delta", **shape.at, delta=piece)
                    await asyncio.sleep(DEMO_DELAY_SECONDS)
                for event in shape.closing(reply, usage):
                    yield event
                self.settle(self.estimate_prompt, completion)
            finally:
                # A member who stops the reply pays for the words they received.
                self.outcome = "cut"
                self.settle_delivered(None, delivered)

        return event_stream(events())


class DemoResponse:
    """The demo model's reply in the Responses API's shapes and event sequence."""

    def __init__(self, call: ResponseCall, created: int) -> None:
        self.call = call
        self.created = created
        self.id = f"resp_{call.id}"
        self.item_id = f"msg_{call.id}"
        self.sequence = 0
        self.at = {"item_id": self.item_id, "output_index": 0, "content_index": 0}

    def response(
        self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None
    ) -> dict[str, Any]:
        body = self.call.request.body
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "model": self.call.model.name,
            "output": output,
            "instructions": body.get("instructions"),
            "max_output_tokens": self.call.budget,
            "parallel_tool_calls": True,
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "previous_response_id": body.get("previous_response_id"),
            "error": None,
            "incomplete_details": None,
            "usage": usage,
        }

    def message(self, text: str | None) -> dict[str, Any]:
        done = text is not None
        return {
            "id": self.item_id,
            "type": "message",
            "status": "completed" if done else "in_progress",
            "role": "assistant",
            "content": [self.part(text)] if done else [],
        }

    @staticmethod
    def part(text: str | None) -> dict[str, Any]:
        return {"type": "output_text", "text": text or "", "annotations": [], "logprobs": []}

    def event(self, kind: str, **fields: Any) -> str:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"

    def opening(self) -> Iterator[str]:
        started = self.response("in_progress", [], None)
        yield self.event("response.created", response=started)
        yield self.event("response.in_progress", response=started)
        yield self.event("response.output_item.added", output_index=0, item=self.message(None))
        yield self.event("response.content_part.added", **self.at, part=self.part(""))

    def closing(self, text: str, usage: dict[str, Any]) -> Iterator[str]:
        yield self.event("response.output_text.done", **self.at, text=text, logprobs=[])
        yield self.event("response.content_part.done", **self.at, part=self.part(text))
        item = self.message(text)
        yield self.event("response.output_item.done", output_index=0, item=item)
        yield self.event("response.completed", response=self.response("completed", [item], usage))


class ResponseEvents(StreamReader):
    """The Responses API's stream: ``event:`` and ``data:`` lines relayed as they come,
    output deltas counted, usage taken from the event that ends the response."""

    def __init__(self) -> None:
        super().__init__()
        self.sequence = 0
        # An event's ``event:`` and ``id:`` lines, sent with its data in one write.
        self.fields = ""

    def line(self, line: str) -> str | None:
        if line.startswith(("event:", "id:")):
            self.fields += line + "\n"
            return None
        if not line.startswith("data:"):
            return None
        data = line[5:].strip()
        fields, self.fields = self.fields, ""
        try:
            event = loads(data)
        except ValueError:
            return f"{fields}data: {data}\n\n"
        if isinstance(event, dict):
            kind = event.get("type")
            if isinstance(event.get("sequence_number"), int):
                self.sequence = event["sequence_number"] + 1
            if kind in DELTA_EVENTS and isinstance(event.get("delta"), str):
                self.delivered.append(event["delta"])
            elif kind in FINAL_EVENTS and isinstance(event.get("response"), dict):
                self.usage = event["response"].get("usage")
        return f"{fields}data: {data}\n\n"

    def error(self, message: str) -> str:
        data = {
            "type": "error",
            "code": "upstream_error",
            "message": message,
            "param": None,
            "sequence_number": self.sequence,
        }
        return f"event: error\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def output_texts(output: Any) -> Iterator[str]:
    """The text of a whole response's output items that the call is billed for: the
    messages' text and refusals, tool calls' names and arguments, reasoning."""
    if not isinstance(output, list):
        return
    for item in output:
        if not isinstance(item, dict):
            continue
        for field in ("name", "arguments", "input"):
            if isinstance(item.get(field), str):
                yield item[field]
        for parts in ("content", "summary"):
            for part in item.get(parts) or []:
                if isinstance(part, dict):
                    for field in ("text", "refusal"):
                        if isinstance(part.get(field), str):
                            yield part[field]


@router.post(
    "/responses", openapi_extra={"requestBody": RESPONSES_BODY}, responses=RESPONSES_RESPONSES
)
async def create_response(request: Request) -> Response:
    return await serve_metered(request, parse_responses, ResponseCall.plan)
