"""One metered completion: relayed to an upstream or answered by the demo model.

A completion knows its hold and settles it exactly once: with the usage the
upstream reported when that is believable, else with a conservative count of
what was delivered plus the prompt estimate. A call that costs more than was
held (an upstream that ignored the budget) is charged in full and recorded as
an overrun. The hold is released untouched only when the upstream failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import aiohttp
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tokendesk.accounts.keycache import KeyOwner
from tokendesk.audit import service as audit
from tokendesk.bounds import MAX_EVENT_TOKENS, is_count
from tokendesk.db import Database
from tokendesk.gateway import demo_model
from tokendesk.gateway.budget import (
    Budgeted,
    ChatRequest,
    completion_budget,
    hold_size,
    upstream_body,
)
from tokendesk.gateway.dialects import openai_error
from tokendesk.gateway.holds import Hold, Settlement, release
from tokendesk.gateway.model_config import ModelConfig
from tokendesk.gateway.tokens import text_tokens
from tokendesk.metering.service import UsageInput
from tokendesk.observability.context import since_arrival

if TYPE_CHECKING:
    from tokendesk.gateway.routes import Gateway, Plan

R = TypeVar("R", bound=Budgeted)

log = logging.getLogger(__name__)

DEMO_DELAY_SECONDS = 0.02
# Reported usage beyond this many times both the hold and what was delivered is taken
# for a fault, not an upstream that ignored its budget; so are fewer completion tokens
# than a tenth of what the reply's text counts: tokenizers differ, but not by so much.
ABSURD_FACTOR = 10


def loads(content: bytes | str, *, allow_nan: bool = True) -> Any:
    """JSON as :func:`json.loads` reads it; nesting too deep for the parser is invalid
    JSON (a ValueError) like any other, not a RecursionError that escapes as a 500.

    ``NaN`` and ``Infinity`` are not JSON: refused with ``allow_nan=False`` (what a member
    sends, which goes upstream), read as floats otherwise (upstream logprobs carry them).
    """
    try:
        return json.loads(content, parse_constant=None if allow_nan else _not_json)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not valid JSON")


class Overruns:
    """Calls charged more than they held, and upstream usage that could not be believed.

    The counts live on the gateway's runtime for a metrics endpoint to expose; each
    overrun is also written to the audit log, off the call's path.
    """

    def __init__(self, database: Database) -> None:
        self.database = database
        self.calls = 0
        self.tokens = 0
        self.unusable_usage = 0
        self._writes: set[asyncio.Task[None]] = set()

    def record(
        self, *, caller: KeyOwner, model: str, call_id: str, held: int, charged: int
    ) -> None:
        self.calls += 1
        self.tokens += charged - held
        log.warning("call %s cost %d tokens against a hold of %d", call_id, charged, held)
        details = {"model": model, "call_id": call_id, "held": held, "charged": charged}
        task = asyncio.get_running_loop().create_task(self._audit(caller, details))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _audit(self, caller: KeyOwner, details: dict[str, Any]) -> None:
        try:
            async with self.database.transaction() as session:
                await audit.record(
                    session,
                    organization_id=caller.organization_id,
                    actor_id=None,
                    action="gateway.overrun",
                    target_type="user",
                    target_id=caller.user_id,
                    details=details,
                )
        except Exception:
            log.exception("recording the overrun of call %s failed", details["call_id"])

    async def drain(self) -> None:
        """Wait until every overrun seen so far is in the audit log."""
        while self._writes:
            await asyncio.gather(*self._writes)


@dataclass(frozen=True)
class UsageNames:
    """Where an API's usage object reports input and output tokens, and the cached and
    reasoning parts of each (``(details, field)``)."""

    prompt: str
    completion: str
    cached: tuple[str, str]
    reasoning: tuple[str, str]


# Chat Completions' and the legacy Completions' usage.
CHAT_USAGE = UsageNames(
    "prompt_tokens",
    "completion_tokens",
    ("prompt_tokens_details", "cached_tokens"),
    ("completion_tokens_details", "reasoning_tokens"),
)
# Calls whose input the upstream keeps beyond what tokendesk sees (an earlier response,
# a conversation) may report up to this many input tokens and still be believed: the
# largest context windows of 2026 are a couple of million tokens.
HIDDEN_CONTEXT_TOKENS = 4_000_000


class MeteredCall:
    """One metered call, on any of the gateway's APIs: knows its hold and settles it
    exactly once, with the usage event recording its ``endpoint``."""

    endpoint = "chat"
    # What the call's id starts with, as its API's clients know its replies' ids.
    id_kind = "chatcmpl-"
    usage_names = CHAT_USAGE
    # Whether the upstream adds input tokendesk cannot see (Responses' previous_response_id).
    hidden_context = False

    def __init__(
        self,
        gateway: Gateway,
        caller: KeyOwner,
        model: ModelConfig,
        hold_id: int,
        *,
        held: int,
        prompt: int,
    ) -> None:
        self.gateway = gateway
        self.caller = caller
        self.model = model
        self.hold_id = hold_id
        self.held = held
        # Tokens the upstream will bill as input, estimated (unweighted).
        self.estimate_prompt = prompt
        self.id = f"{self.id_kind}{gateway.id_prefix}{next(gateway.ids):x}"
        self._done = False
        # What the call is counted as once settled (a stream cut short says so first).
        self.outcome = "ok"
        self._first_output = False
        gateway.metrics.tokens(model.name, "held", held)
        gateway.call_opened()

    def settle(self, prompt: int, completion: int, *, cached: int = 0, reasoning: int = 0) -> None:
        """Charge ``prompt`` input and ``completion`` output tokens, of which ``cached``
        input tokens came from the upstream's prompt cache and ``reasoning`` output
        tokens were reasoning (each kind at its weight), and record them all."""
        if self._done:
            return
        self._done = True
        # The kinds are parts of the input and the output: a part that is not a count
        # within its whole is not believed and counts as none, whoever passed it.
        cached = cached if is_count(cached, maximum=prompt) else 0
        reasoning = reasoning if is_count(reasoning, maximum=completion) else 0
        charged = self.model.charge(prompt=prompt, completion=completion, cached=cached)
        if charged > self.held:
            self.gateway.overruns.record(
                caller=self.caller,
                model=self.model.name,
                call_id=self.id,
                held=self.held,
                charged=charged,
            )
        # A usage event holds at most MAX_EVENT_TOKENS: a charge past it is recorded at
        # that cap, since the ledger would refuse the whole settlement (a free call).
        prompt = min(prompt, MAX_EVENT_TOKENS)
        completion = min(completion, MAX_EVENT_TOKENS - prompt)
        charged = min(charged, MAX_EVENT_TOKENS)
        cached, reasoning = min(cached, prompt), min(reasoning, completion)
        self.gateway.metrics.settled_call(
            self.model.name,
            self.endpoint,
            self.outcome,
            (
                ("settled", self.held),
                ("charged", charged),
                ("prompt", prompt),
                ("completion", completion),
                ("cached", cached),
                ("reasoning", reasoning),
            ),
        )
        self.gateway.settler.submit(
            Settlement(
                reservation_id=self.hold_id,
                organization_id=self.caller.organization_id,
                usage=UsageInput(
                    event_id=self.id,
                    user_id=self.caller.user_id,
                    model=self.model.name,
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    cached_tokens=cached,
                    reasoning_tokens=reasoning,
                    total_tokens=charged,
                    occurred_at=datetime.now(UTC),
                    source="gateway",
                    endpoint=self.endpoint,
                ),
            )
        )
        self.gateway.call_closed()

    async def release(self, outcome: str = "upstream_error") -> None:
        if self._done:
            return
        self._done = True
        metrics = self.gateway.metrics
        metrics.call(self.model.name, self.endpoint, outcome)
        metrics.tokens(self.model.name, "released", self.held)
        try:
            await release(self.gateway.database, reservation_id=self.hold_id)
        finally:
            self.gateway.call_closed()

    def first_output(self) -> None:
        """The first output of a streamed reply is on its way: time to first token."""
        if not self._first_output:
            self._first_output = True
            self.gateway.metrics.first_output(self.model.name, self.endpoint, since_arrival())

    def usage_ceiling(self, counted: int) -> int:
        """The most tokens a believable usage report may claim, ``counted`` being the
        output's own count."""
        return ABSURD_FACTOR * max(
            self.model.tokens_within(self.held), self.estimate_prompt + counted
        )

    def unusable(self, usage: Any) -> None:
        self.gateway.overruns.unusable_usage += 1
        log.warning("call %s: upstream usage %r is unusable; counting the reply", self.id, usage)

    def counted(self, delivered: str) -> int:
        """The output tokens ``delivered`` text counts as (a reply that echoes its
        prompt counts without it)."""
        return text_tokens(delivered)

    def settle_delivered(self, usage: Any, delivered: str) -> None:
        """Charge what the upstream reported if it is believable, else a conservative
        count of what was delivered plus the prompt estimate.

        The upstream took the prompt once it answered, so even a reply cut before its
        first word pays for the prompt.
        """
        counted = self.counted(delivered)
        reported = self._believable(usage, counted)
        if reported is None:
            self.settle(self.estimate_prompt, counted)
        else:
            prompt, completion = reported
            names = self.usage_names
            self.settle(
                prompt,
                completion,
                cached=_detail(usage, *names.cached, prompt),
                reasoning=_detail(usage, *names.reasoning, completion),
            )

    def _believable(self, usage: Any, counted: int) -> tuple[int, int] | None:
        if usage is None:
            return None
        fields = usage if isinstance(usage, dict) else {}
        prompt = fields.get(self.usage_names.prompt)
        completion = fields.get(self.usage_names.completion)
        if (
            is_count(prompt)
            and is_count(completion)
            and self.believable(prompt, completion, counted)
        ):
            return prompt, completion
        self.unusable(usage)
        return None

    def believable(self, prompt: int, completion: int, counted: int) -> bool:
        """Whether reported usage of ``prompt`` input and ``completion`` output tokens
        can be charged, ``counted`` being the output's own count."""
        ceiling = self.usage_ceiling(counted)
        # With input the upstream keeps, only the output is bounded by what was held.
        most_prompt = HIDDEN_CONTEXT_TOKENS + ceiling if self.hidden_context else ceiling
        return (
            prompt > 0
            and ABSURD_FACTOR * completion >= counted
            and prompt <= most_prompt
            and completion + (0 if self.hidden_context else prompt) <= ceiling
        )

    async def relay(
        self, response: aiohttp.ClientResponse, reader: StreamReader
    ) -> AsyncIterator[str]:
        """An upstream's event stream relayed as ``reader`` rewrites its lines, settled
        once it ends, however it ends, with the usage and text it gathered.

        What arrived together is sent together: an API that sends several events at
        once (the Responses API's opening and closing ones) costs one write, not one
        per line, and nothing waits for more than the upstream has sent."""
        ended = False  # the upstream's stream ended and was relayed whole
        lines = Lines(MAX_EVENT_LINE)
        try:
            async for data in response.content.iter_any():
                out = reader.lines(lines.feed(data))
                if reader.delivered:
                    self.first_output()
                if out:
                    yield out
                if reader.finished:
                    break
                if lines.too_long:
                    raise LineTooLong(lines.most)
            else:
                out = reader.lines(lines.rest())
                if out:
                    yield out
            ended = True
        except (*UPSTREAM_ERRORS, LineTooLong) as exc:
            yield reader.error(f"upstream failed mid-stream: {_describe(exc)}")
        finally:
            if not ended:
                self.outcome = "cut"
            self.settle_delivered(reader.usage, "".join(reader.delivered))
            response.release()

    def upstream_error(self, status: int, message: str) -> JSONResponse:
        """What the member gets when the upstream could not be used, in their API's shape."""
        return openai_error(status, message, type_="upstream_error")

    async def post(
        self, payload: dict[str, Any], *, forwarded: dict[str, str] | None = None
    ) -> aiohttp.ClientResponse | Response:
        """The call sent to the model's upstream for this endpoint (with the client's
        ``forwarded`` headers): its response, or, the hold released, what the member
        gets when the upstream failed or refused."""
        url = self.gateway.upstream_urls[self.endpoint][self.model.name]
        self.gateway.metrics.added(self.endpoint, since_arrival())
        try:
            response = await self.gateway.client.post(
                url,
                data=json.dumps(payload).encode(),
                headers=upstream_headers(self.model, forwarded),
            )
        except UPSTREAM_ERRORS as exc:
            await self.release()
            return self.upstream_error(502, f"upstream unavailable: {_describe(exc)}")
        if response.status >= 400:
            try:
                content = await response.read()
            except UPSTREAM_ERRORS:
                content = b""
            response.release()
            await self.release("upstream_refused" if response.status < 500 else "upstream_error")
            return Response(
                content=content,
                status_code=response.status,
                media_type=response.headers.get("content-type", "application/json"),
            )
        return response

    async def read_json(self, response: aiohttp.ClientResponse) -> tuple[bytes, Any] | Response:
        """A whole reply's bytes and JSON, or, the hold released, a 502."""
        try:
            content = await response.read()
        except UPSTREAM_ERRORS as exc:
            await self.release()
            return self.upstream_error(502, f"upstream failed: {_describe(exc)}")
        finally:
            response.release()
        try:
            return content, loads(content)
        except ValueError:
            await self.release()
            return self.upstream_error(502, "upstream sent invalid JSON")


class BudgetedCall(MeteredCall, Generic[R]):
    """A call whose output tokendesk caps: it knows its checked ``request`` and the
    budget per generation its hold pays for, the cap the upstream is sent."""

    def __init__(
        self, gateway: Gateway, caller: KeyOwner, request: R, hold_id: int, *, held: int
    ) -> None:
        super().__init__(gateway, caller, request.model, hold_id, held=held, prompt=request.prompt)
        self.request = request
        self.budget = completion_budget(request, held)

    async def demo(self) -> Response:
        raise NotImplementedError

    async def upstream(self) -> Response:
        raise NotImplementedError

    @classmethod
    def plan(cls, gateway: Gateway, caller: KeyOwner, request: R) -> Plan:
        """Hold what the request may cost, then answer with the demo or the upstream."""

        def answer(hold: Hold) -> Awaitable[Response]:
            call = cls(gateway, caller, request, hold.id, held=hold.amount)
            return call.demo() if request.model.is_demo else call.upstream()

        return hold_size(request, gateway.settings), answer


class Completion(MeteredCall):
    """One metered chat completion."""

    def __init__(
        self, gateway: Gateway, caller: KeyOwner, chat: ChatRequest, hold_id: int, *, held: int
    ) -> None:
        super().__init__(gateway, caller, chat.model, hold_id, held=held, prompt=chat.prompt)
        self.chat = chat
        # The completion budget per choice that goes upstream: what the hold pays for.
        self.budget = completion_budget(chat, held)

    # -- the built-in demo model ---------------------------------------------------------

    async def demo(self) -> Response:
        reply = demo_model.compose_reply(self.chat.messages, self.budget)
        usage = demo_model.usage_for(self.estimate_prompt, reply)
        created = int(time.time())
        if not self.chat.stream:
            self.settle(usage["prompt_tokens"], usage["completion_tokens"])
            return JSONResponse(
                {
                    "id": self.id,
                    "object": "chat.completion",
                    "created": created,
                    "model": self.model.name,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )

        async def events() -> AsyncIterator[str]:
            delivered = ""
            try:
                for piece in demo_model.chunks(reply):
                    delivered += piece
                    self.first_output()
                    yield sse(self._chunk(created, {"content": piece}, None))
                    await asyncio.sleep(DEMO_DELAY_SECONDS)
                yield sse(self._chunk(created, {}, "stop"))
                yield sse({**self._chunk(created, {}, None), "choices": [], "usage": usage})
                yield "data: [DONE]\n\n"
                self.settle(usage["prompt_tokens"], usage["completion_tokens"])
            finally:
                # A member who stops the reply pays for the words they received.
                self.outcome = "cut"
                self.settle_delivered(None, delivered)

        return event_stream(events())

    def _chunk(self, created: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": self.model.name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    # -- real upstreams ------------------------------------------------------------------

    async def upstream(self) -> Response:
        response = await self.post(upstream_body(self.chat, self.budget))
        if isinstance(response, Response):
            return response
        if not self.chat.stream:
            return await self._whole(response)
        wants_usage = bool((self.chat.body.get("stream_options") or {}).get("include_usage"))
        return event_stream(self.relay(response, ChunkStream(wants_usage, _delta_texts)))

    async def _whole(self, response: aiohttp.ClientResponse) -> Response:
        read = await self.read_json(response)
        if isinstance(read, Response):
            return read
        content, data = read
        if not isinstance(data, dict):
            data = {}
        delivered = "".join(
            text
            for choice in _listed(data.get("choices"))
            if isinstance(choice, dict)
            for text in _output_texts(choice.get("message"))
        )
        self.settle_delivered(data.get("usage"), delivered)
        return Response(content=content, media_type="application/json")


# The longest line of an upstream's event stream: a Responses stream's last event
# repeats the whole reply, so a line is as long as the longest answer. Past this, the
# upstream is at fault and the stream is cut.
MAX_EVENT_LINE = 16 * 1024 * 1024


class LineTooLong(Exception):
    def __init__(self, most: int) -> None:
        super().__init__(f"an event line longer than {most:,} bytes")


class Lines:
    """The whole lines of a byte stream, however its chunks split them; the part of a
    line still to come is kept, and :attr:`too_long` once it is past ``most`` bytes."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.parts: list[bytes] = []
        self.size = 0

    @property
    def too_long(self) -> bool:
        return self.size > self.most

    def feed(self, data: bytes) -> list[bytes]:
        if b"\n" not in data:
            self._keep(data)
            return []
        if self.parts:
            data = self._taken() + data
        *lines, rest = data.split(b"\n")
        if rest:
            self._keep(rest)
        return lines

    def rest(self) -> list[bytes]:
        """The last line, which no newline ended."""
        rest = self._taken()
        return [rest] if rest else []

    def _taken(self) -> bytes:
        """The part of a line kept so far, no longer kept."""
        kept = b"".join(self.parts)
        self.parts.clear()
        self.size = 0
        return kept

    def _keep(self, part: bytes) -> None:
        self.size += len(part)
        self.parts.append(part)


class StreamReader:
    """How one API's event stream is read while relayed: each line rewritten (None
    drops it), the usage it reported and the text delivered so far."""

    def __init__(self) -> None:
        self.usage: Any = None
        self.delivered: list[str] = []
        # The stream said its last word: nothing after it is relayed.
        self.finished = False

    def line(self, line: str) -> str | None:
        raise NotImplementedError

    def lines(self, lines: list[bytes]) -> str:
        """Whole lines as relayed, up to the stream's last word."""
        out = []
        for raw in lines:
            if self.finished:
                break
            relayed = self.line(raw.decode("utf-8", "replace").strip())
            if relayed is not None:
                out.append(relayed)
        return "".join(out)

    def error(self, message: str) -> str:
        return sse({"error": {"message": message, "type": "upstream_error"}})


class ChunkStream(StreamReader):
    """Chat Completions' and the legacy Completions' stream: ``data:`` chunks of choices,
    usage in a last chunk of its own (asked for always, relayed if the client asked
    too), then ``[DONE]``."""

    def __init__(self, wants_usage: bool, texts: Callable[[Any], Iterator[str]]) -> None:
        super().__init__()
        self.wants_usage = wants_usage
        # The text a choice of a chunk carries.
        self.texts = texts

    def line(self, line: str) -> str | None:
        if not line.startswith("data:"):
            return None
        data = line[5:].strip()
        if data == "[DONE]":
            self.finished = True
            return "data: [DONE]\n\n"
        try:
            chunk = loads(data)
        except ValueError:
            return None
        if not isinstance(chunk, dict):
            return f"data: {data}\n\n"
        if chunk.get("usage"):
            self.usage = chunk["usage"]
            if not chunk.get("choices") and not self.wants_usage:
                return None  # we asked for usage; the client did not
        for choice in _listed(chunk.get("choices")):
            if isinstance(choice, dict):
                self.delivered.extend(self.texts(choice))
        return f"data: {data}\n\n"


def _delta_texts(choice: dict[str, Any]) -> Iterator[str]:
    return _output_texts(choice.get("delta"))


UPSTREAM_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


def upstream_headers(model: ModelConfig, forwarded: dict[str, str] | None) -> dict[str, str]:
    """The headers a call to ``model``'s upstream carries: its configured key, in the
    header its kind reads, and the client's ``forwarded`` ones (already checked). The
    member's tokendesk key never leaves tokendesk."""
    headers = {"content-type": "application/json"}
    if model.api_key:
        if model.api == "anthropic":
            headers["x-api-key"] = model.api_key
        else:
            headers["authorization"] = f"Bearer {model.api_key}"
    if forwarded:
        headers.update(forwarded)
    return headers


# Everything a model writes that it is billed for, besides tool calls.
OUTPUT_FIELDS = ("content", "refusal", "reasoning_content", "reasoning")


def _output_texts(message: Any) -> Iterator[str]:
    """The text a reply message (or a stream's delta) carries: content, refusals,
    reasoning, and the names and arguments of tool and function calls."""
    if not isinstance(message, dict):
        return
    for field in OUTPUT_FIELDS:
        value = message.get(field)
        if isinstance(value, str):
            yield value
    functions = [
        call.get("function")
        for call in _listed(message.get("tool_calls"))
        if isinstance(call, dict)
    ]
    functions.append(message.get("function_call"))
    for function in functions:
        if isinstance(function, dict):
            for field in ("name", "arguments"):
                value = function.get(field)
                if isinstance(value, str):
                    yield value


def _detail(usage: dict[str, Any], details: str, field: str, whole: int) -> int:
    """``usage[details][field]`` (OpenAI's breakdown of a believed total, such as the
    cached part of the prompt) when it is a count within ``whole``, else 0: the total
    is charged all the same, at its plain kind's weight."""
    value = _mapping(usage.get(details)).get(field)
    return value if is_count(value, maximum=whole) else 0


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _describe(exc: BaseException) -> str:
    if isinstance(exc, LineTooLong):
        return str(exc)
    return "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def event_stream(body: AsyncIterator[str] | AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
