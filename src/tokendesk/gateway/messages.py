"""Anthropic's Messages API: ``POST /v1/messages``, metered under the chat rules, and
``POST /v1/messages/count_tokens``, free.

What Claude Code and Anthropic's SDKs call. Callers, holds, refusals and the
standing headers are the chat completions' own (:func:`gateway.routes.serve_metered`),
in Anthropic's error shape and with its ``x-api-key`` header read beside
``Authorization: Bearer``. ``max_tokens``, which Anthropic requires, is the most a
call may use: held whole when the balance covers it, else what the balance covers
down to the floor (above any ``thinking.budget_tokens``, which lives inside it),
and tokendesk sends the upstream exactly what it held for. Anthropic's
``input_tokens`` excludes cache reads and writes: the input billed is the three
together, the cache reads its cached part.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from tokendesk.bounds import is_count
from tokendesk.gateway import demo_model
from tokendesk.gateway.budget import (
    BadParameter,
    HoldSize,
    completion_budget,
    count_field,
    hold_between,
    model_speaking,
)
from tokendesk.gateway.callers import GatewayError
from tokendesk.gateway.completion import (
    DEMO_DELAY_SECONDS,
    MAX_EVENT_LINE,
    UPSTREAM_ERRORS,
    Lines,
    LineTooLong,
    MeteredCall,
    _describe,
    _listed,
    _mapping,
    event_stream,
    loads,
    upstream_headers,
)
from tokendesk.gateway.dialects import ANTHROPIC, anthropic_error
from tokendesk.gateway.holds import Hold
from tokendesk.gateway.model_config import ModelConfig
from tokendesk.gateway.openapi import (
    COUNT_TOKENS_BODY,
    COUNT_TOKENS_RESPONSES,
    MESSAGES_BODY,
    MESSAGES_RESPONSES,
)
from tokendesk.gateway.routes import Plan, _gateway, _too_many_calls, checked_call, serve_metered
from tokendesk.gateway.tokens import anthropic_prompt_tokens, text_tokens

if TYPE_CHECKING:
    from tokendesk.accounts.keycache import KeyOwner
    from tokendesk.config import Settings
    from tokendesk.gateway.routes import Gateway

router = APIRouter(prefix="/v1", tags=["gateway"])

# What an Anthropic client gets when it names no version: the API's first, which
# Anthropic's own SDKs still send.
DEFAULT_VERSION = "2023-06-01"
# The client's headers the upstream reads, bounded: a version is a date-like name, the
# betas a comma-separated list of names (Claude Code sends a handful).
VERSION = re.compile(r"[A-Za-z0-9._-]{1,64}")
BETAS = re.compile(r"[A-Za-z0-9._, -]{1,2048}")
ROLES = ("user", "assistant")
# A budget no demo reply reaches: the reply as it would be uncut.
WHOLE_REPLY = 10**6
# Anthropic's own least thinking budget.
MIN_THINKING_TOKENS = 1024


@dataclass(frozen=True)
class MessagesRequest:
    """A checked Messages API request (or a count_tokens one, without a budget)."""

    body: dict[str, Any]
    model: ModelConfig
    messages: list[Any]
    # ``max_tokens``: what the client allows the reply (None when counting tokens).
    requested: int | None
    stream: bool
    # Tokens the upstream will bill as input, estimated (unweighted).
    prompt: int
    # ``thinking.budget_tokens`` when extended thinking is on: less than max_tokens.
    thinking: int | None
    # The client's anthropic-version and anthropic-beta headers, as the upstream gets them.
    forwarded: dict[str, str] = field(default_factory=dict)
    n: int = 1


def parse_messages(
    body: Any, models: dict[str, ModelConfig], headers: Mapping[str, str], *, counting: bool
) -> MessagesRequest:
    """Check a Messages body (``counting``: a count_tokens one) and the headers that go
    upstream; raises BadParameter or UnknownModel."""
    if not isinstance(body, dict):
        raise BadParameter("body", "the body must be a JSON object")
    model = model_speaking(body, models, "messages")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadParameter("messages", "a non-empty list is required")
    for index, message in enumerate(messages):
        _check_message(message, f"messages.{index}")
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise BadParameter("system", "must be a string or a list of text blocks")
    requested = None if counting else _max_tokens(body.get("max_tokens"), model)
    thinking = _thinking(body.get("thinking"), requested)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadParameter("stream", "must be true or false")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise BadParameter("metadata", "must be an object")
    return MessagesRequest(
        body=body,
        model=model,
        messages=messages,
        requested=requested,
        stream=bool(stream) and not counting,
        prompt=anthropic_prompt_tokens(body),
        thinking=thinking,
        forwarded=forwarded_headers(headers),
    )


def _check_message(message: Any, param: str) -> None:
    if not isinstance(message, dict):
        raise BadParameter(param, "must be an object with a role and content")
    if message.get("role") not in ROLES:
        raise BadParameter(f"{param}.role", f"must be one of {', '.join(ROLES)}")
    if not isinstance(message.get("content"), str | list):
        raise BadParameter(f"{param}.content", "must be a string or a list of content blocks")


def _max_tokens(value: Any, model: ModelConfig) -> int:
    most = model.max_output_tokens
    counted = count_field(value, "max_tokens", most=most, limit="for this model")
    if counted is None:
        raise BadParameter("max_tokens", "required")
    return counted


def _thinking(value: Any, requested: int | None) -> int | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadParameter("thinking", "must be an object")
    if value.get("type") != "enabled":
        return None
    budget = value.get("budget_tokens")
    if not is_count(budget) or budget < MIN_THINKING_TOKENS:
        raise BadParameter(
            "thinking.budget_tokens", f"must be an integer of at least {MIN_THINKING_TOKENS}"
        )
    if requested is not None and budget >= requested:
        raise BadParameter("thinking.budget_tokens", "must be less than max_tokens")
    return budget


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's ``anthropic-version`` (its default when absent) and
    ``anthropic-beta``, checked; raises BadParameter."""
    version = headers.get("anthropic-version", DEFAULT_VERSION).strip()
    if not VERSION.fullmatch(version):
        raise BadParameter(
            "anthropic-version", "must be a version name such as 2023-06-01 (64 characters at most)"
        )
    forwarded = {"anthropic-version": version}
    beta = headers.get("anthropic-beta", "").strip()
    if beta:
        if not BETAS.fullmatch(beta):
            raise BadParameter(
                "anthropic-beta",
                "must be a comma-separated list of beta names (2048 characters at most)",
            )
        forwarded["anthropic-beta"] = beta
    return forwarded


def message_hold(request: MessagesRequest, settings: Settings) -> HoldSize:
    """``max_tokens`` held whole, or with less left down to the gateway's floor, which
    stays above any thinking budget so that the upstream accepts the call."""
    assert request.requested is not None
    floor = settings.gateway_min_completion_tokens
    if request.thinking is not None:
        floor = max(floor, request.thinking + 1)
    return hold_between(request, budget=request.requested, floor=min(floor, request.requested))


class Message(MeteredCall):
    """One metered Messages API call."""

    endpoint = "messages"
    id_kind = "msg_"

    def __init__(
        self,
        gateway: Gateway,
        caller: KeyOwner,
        request: MessagesRequest,
        hold_id: int,
        *,
        held: int,
    ) -> None:
        super().__init__(gateway, caller, request.model, hold_id, held=held, prompt=request.prompt)
        self.request = request
        # The max_tokens that goes upstream: what the hold pays for.
        self.budget = completion_budget(request, held)

    def upstream_error(self, status: int, message: str) -> JSONResponse:
        return anthropic_error(status, message)

    def settle_reported(self, usage: Any, delivered: str, *, final: bool) -> None:
        """Charge what the upstream reported if it is believable, else a conservative
        count of what was delivered plus the prompt estimate. Before its final usage
        (``final``: a stream's message_delta) the output is what was delivered."""
        counted = text_tokens(delivered)
        if usage is None:
            self.settle(self.estimate_prompt, counted)
            return
        fields = _mapping(usage)
        uncached = fields.get("input_tokens")
        read = fields.get("cache_read_input_tokens") or 0
        written = fields.get("cache_creation_input_tokens") or 0
        output = fields.get("output_tokens")
        if not final:
            output = max(output if is_count(output) else 0, counted)
        if is_count(uncached) and is_count(read) and is_count(written) and is_count(output):
            prompt = uncached + read + written
            if self.believable(prompt, output, counted):
                self.settle(prompt, output, cached=read)
                return
        self.unusable(usage)
        self.settle(self.estimate_prompt, counted)

    # -- the built-in demo model ---------------------------------------------------------

    async def demo(self) -> Response:
        whole = demo_model.compose_reply(self.request.messages, WHOLE_REPLY)
        reply = demo_model.compose_reply(self.request.messages, self.budget)
        stop = "end_turn" if reply == whole else "max_tokens"
        usage = demo_model.anthropic_usage(self.estimate_prompt, text_tokens(reply))
        if not self.request.stream:
            self.settle(self.estimate_prompt, usage["output_tokens"])
            return JSONResponse(
                demo_model.anthropic_message(self.id, self.model.name, reply, stop, usage)
            )

        async def events() -> AsyncIterator[str]:
            delivered = ""
            try:
                for kind, data in demo_model.anthropic_events(
                    self.id, self.model.name, reply, stop, usage
                ):
                    if kind == "content_block_delta":
                        delivered += data["delta"]["text"]
                        self.first_output()
                        await asyncio.sleep(DEMO_DELAY_SECONDS)
                    yield _event(kind, data)
                self.settle(self.estimate_prompt, usage["output_tokens"])
            finally:
                # A member who stops the reply pays for the words they received.
                self.outcome = "cut"
                self.settle_reported(None, delivered, final=False)

        return event_stream(events())

    # -- real upstreams ------------------------------------------------------------------

    async def upstream(self) -> Response:
        payload = dict(self.request.body)
        payload["model"] = self.model.upstream_model or self.model.name
        payload["max_tokens"] = self.budget
        response = await self.post(payload, forwarded=self.request.forwarded)
        if isinstance(response, Response):
            return response
        if self.request.stream:
            return event_stream(self._relay(response))
        read = await self.read_json(response)
        if isinstance(read, Response):
            return read
        content, data = read
        data = _mapping(data)
        delivered = "".join(
            text for block in _listed(data.get("content")) for text in _block_texts(block)
        )
        self.settle_reported(data.get("usage"), delivered, final=True)
        return Response(content=content, media_type="application/json")

    async def _relay(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        """The upstream's events, each passed on whole as it ends (those one read
        brought, in one write), reading the usage of message_start and message_delta
        and counting the deltas delivered."""
        events = MessageEvents()
        lines = Lines(MAX_EVENT_LINE)
        released = ended = False
        try:
            async for data in response.content.iter_any():
                out = events.lines(lines.feed(data))
                if events.failed and not events.delivered and not released:
                    # Refused before a word: nothing to pay for. Released before the
                    # client hears of it (it hangs up then), and shielded from that.
                    released = True
                    await asyncio.shield(self.release("upstream_refused"))
                if events.delivered:
                    self.first_output()
                if out:
                    yield out
                if lines.too_long:
                    raise LineTooLong(lines.most)
            out = events.lines([*lines.rest(), b""])
            if out:
                yield out
            ended = not events.failed
        except (*UPSTREAM_ERRORS, LineTooLong) as exc:
            error = {
                "type": "error",
                "error": {
                    "type": "api_error",
                    "message": f"upstream failed mid-stream: {_describe(exc)}",
                },
            }
            yield _event("error", error).encode()
        finally:
            if not ended:
                self.outcome = "cut"
            usage = events.usage or None
            self.settle_reported(usage, "".join(events.delivered), final=events.final)
            response.release()


class MessageEvents:
    """The Messages API's stream as it is relayed: each event passed on whole once its
    blank line ends it, the usage of message_start and message_delta read, the deltas
    counted."""

    def __init__(self) -> None:
        self.delivered: list[str] = []
        self.usage: dict[str, Any] = {}
        self.final = self.failed = False
        self.event: list[bytes] = []

    def lines(self, lines: list[bytes]) -> bytes:
        """The events these lines end, as relayed."""
        out = []
        for raw in lines:
            line = raw.rstrip(b"\r")
            if not line:
                if self.event:
                    out.append(b"\n".join(self.event) + b"\n\n")
                    self.event = []
                continue
            self.event.append(line)
            if line.startswith(b"data:"):
                self._read(line[5:])
        return b"".join(out)

    def _read(self, payload: bytes) -> None:
        try:
            data = loads(payload)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        kind = data.get("type")
        if kind == "content_block_delta":
            self.delivered.extend(_delta_texts(data.get("delta")))
        elif kind == "message_start":
            self.usage.update(_mapping(_mapping(data.get("message")).get("usage")))
        elif kind == "message_delta":
            # Its usage is cumulative; newer versions repeat the input's there too.
            reported = _mapping(data.get("usage"))
            self.usage.update({k: v for k, v in reported.items() if v is not None})
            self.final = True
        elif kind == "error":
            self.failed = True


def _block_texts(block: Any) -> Iterator[str]:
    """What a reply's content block carries that the upstream bills as output."""
    if not isinstance(block, dict):
        return
    for name in ("text", "thinking"):
        value = block.get(name)
        if isinstance(value, str):
            yield value
    if block.get("type") in ("tool_use", "server_tool_use") and "input" in block:
        yield json.dumps(block["input"], separators=(",", ":"))


def _delta_texts(delta: Any) -> Iterator[str]:
    """What a stream's delta carries: text, thinking, or a tool call's input JSON."""
    delta = _mapping(delta)
    for name in ("text", "thinking", "partial_json"):
        value = delta.get(name)
        if isinstance(value, str):
            yield value


def _event(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _plan(gateway: Gateway, caller: KeyOwner, request: MessagesRequest) -> Plan:
    def answer(hold: Hold) -> Awaitable[Response]:
        call = Message(gateway, caller, request, hold.id, held=hold.amount)
        return call.demo() if request.model.is_demo else call.upstream()

    return message_hold(request, gateway.settings), answer


@router.post(
    "/messages", openapi_extra={"requestBody": MESSAGES_BODY}, responses=MESSAGES_RESPONSES
)
async def create_message(request: Request) -> Response:
    def parse(body: Any, models: dict[str, ModelConfig]) -> MessagesRequest:
        return parse_messages(body, models, request.headers, counting=False)

    return await serve_metered(request, parse, _plan, dialect=ANTHROPIC)


@router.post(
    "/messages/count_tokens",
    openapi_extra={"requestBody": COUNT_TOKENS_BODY},
    responses=COUNT_TOKENS_RESPONSES,
)
async def count_tokens(request: Request) -> Response:
    """The input tokens a Messages call would bill: free, never held nor charged. The
    demo model answers with tokendesk's own estimate; an upstream's count is passed on."""
    gateway = _gateway(request)

    def parse(body: Any, models: dict[str, ModelConfig]) -> MessagesRequest:
        return parse_messages(body, models, request.headers, counting=True)

    try:
        caller, counted = await checked_call(request, gateway, parse, dialect=ANTHROPIC)
    except GatewayError as exc:
        return exc.render(anthropic_error)
    if counted.model.is_demo:
        return JSONResponse({"input_tokens": counted.prompt})
    # Free, but it takes the upstream's time: it counts among the member's calls at once.
    if not gateway.calls.take(caller.user_id):
        return _too_many_calls(gateway.calls.limit, anthropic_error)
    try:
        return await _counted_upstream(gateway, counted)
    finally:
        gateway.calls.give_back(caller.user_id)


async def _counted_upstream(gateway: Gateway, counted: MessagesRequest) -> Response:
    model = counted.model
    payload = dict(counted.body)
    payload["model"] = model.upstream_model or model.name
    url = gateway.upstream_urls["messages"][model.name] / "count_tokens"
    try:
        async with gateway.client.post(
            url,
            data=json.dumps(payload).encode(),
            headers=upstream_headers(model, counted.forwarded),
        ) as response:
            content = await response.read()
            return Response(
                content=content,
                status_code=response.status,
                media_type=response.headers.get("content-type", "application/json"),
            )
    except UPSTREAM_ERRORS as exc:
        return anthropic_error(502, f"upstream unavailable: {_describe(exc)}")
