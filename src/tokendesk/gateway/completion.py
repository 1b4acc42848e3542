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
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tokendesk.accounts.keycache import KeyOwner
from tokendesk.audit import service as audit
from tokendesk.bounds import MAX_EVENT_TOKENS, is_count
from tokendesk.db import Database
from tokendesk.gateway import demo_model
from tokendesk.gateway.budget import ChatRequest, completion_budget, upstream_body
from tokendesk.gateway.holds import Settlement, release
from tokendesk.gateway.tokens import text_tokens, unweighted, weighted
from tokendesk.metering.service import UsageInput

if TYPE_CHECKING:
    from tokendesk.gateway.routes import Gateway

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


def openai_error(
    status: int,
    message: str,
    *,
    type_: str,
    code: str | None = None,
    param: str | None = None,
) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": type_, "param": param, "code": code}},
    )


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


class Completion:
    """One metered completion: knows its hold and settles it exactly once."""

    def __init__(
        self, gateway: Gateway, caller: KeyOwner, chat: ChatRequest, hold_id: int, *, held: int
    ) -> None:
        self.gateway = gateway
        self.caller = caller
        self.chat = chat
        self.model = chat.model
        self.hold_id = hold_id
        self.held = held
        # The completion budget per choice that goes upstream: what the hold pays for.
        self.budget = completion_budget(chat, held)
        self.estimate_prompt = chat.prompt
        self.id = f"{gateway.id_prefix}{next(gateway.ids):x}"
        self._done = False

    def settle(self, prompt: int, completion: int) -> None:
        if self._done:
            return
        self._done = True
        charged = weighted(prompt + completion, self.model.weight)
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
                    total_tokens=charged,
                    occurred_at=datetime.now(UTC),
                    source="gateway",
                ),
            )
        )

    async def release(self) -> None:
        if self._done:
            return
        self._done = True
        await release(self.gateway.database, reservation_id=self.hold_id)

    def settle_delivered(self, usage: Any, delivered: str) -> None:
        """Charge what the upstream reported if it is believable, else a conservative
        count of what was delivered plus the prompt estimate.

        The upstream took the prompt once it answered, so even a reply cut before its
        first word pays for the prompt.
        """
        counted = text_tokens(delivered)
        reported = self._believable(usage, counted)
        if reported is None:
            self.settle(self.estimate_prompt, counted)
        else:
            self.settle(*reported)

    def _believable(self, usage: Any, counted: int) -> tuple[int, int] | None:
        if usage is None:
            return None
        fields = usage if isinstance(usage, dict) else {}
        prompt, completion = fields.get("prompt_tokens"), fields.get("completion_tokens")
        if is_count(prompt) and is_count(completion):
            ceiling = ABSURD_FACTOR * max(
                unweighted(self.held, self.model.weight), self.estimate_prompt + counted
            )
            if (
                prompt > 0
                and ABSURD_FACTOR * completion >= counted
                and prompt + completion <= ceiling
            ):
                return prompt, completion
        self.gateway.overruns.unusable_usage += 1
        log.warning("call %s: upstream usage %r is unusable; counting the reply", self.id, usage)
        return None

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
                    yield _sse(self._chunk(created, {"content": piece}, None))
                    await asyncio.sleep(DEMO_DELAY_SECONDS)
                yield _sse(self._chunk(created, {}, "stop"))
                yield _sse({**self._chunk(created, {}, None), "choices": [], "usage": usage})
                yield "data: [DONE]\n\n"
                self.settle(usage["prompt_tokens"], usage["completion_tokens"])
            finally:
                # A member who stops the reply pays for the words they received.
                self.settle_delivered(None, delivered)

        return _event_stream(events())

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
        payload = upstream_body(self.chat, self.budget)
        headers = {"content-type": "application/json"}
        # The member's tokendesk key never leaves tokendesk; only the configured upstream key.
        if self.model.api_key:
            headers["authorization"] = f"Bearer {self.model.api_key}"
        url = self.gateway.upstream_urls[self.model.name]
        try:
            response = await self.gateway.client.post(
                url, data=json.dumps(payload).encode(), headers=headers
            )
        except UPSTREAM_ERRORS as exc:
            await self.release()
            return openai_error(
                502, f"upstream unavailable: {_describe(exc)}", type_="upstream_error"
            )
        if response.status >= 400:
            try:
                content = await response.read()
            except UPSTREAM_ERRORS:
                content = b""
            response.release()
            await self.release()
            return Response(
                content=content,
                status_code=response.status,
                media_type=response.headers.get("content-type", "application/json"),
            )
        if not self.chat.stream:
            return await self._whole(response)
        wants_usage = bool((self.chat.body.get("stream_options") or {}).get("include_usage"))
        return _event_stream(self._relay(response, wants_usage))

    async def _whole(self, response: aiohttp.ClientResponse) -> Response:
        try:
            content = await response.read()
        except UPSTREAM_ERRORS as exc:
            await self.release()
            return openai_error(502, f"upstream failed: {_describe(exc)}", type_="upstream_error")
        finally:
            response.release()
        try:
            data = loads(content)
        except ValueError:
            await self.release()
            return openai_error(502, "upstream sent invalid JSON", type_="upstream_error")
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

    async def _relay(
        self, response: aiohttp.ClientResponse, wants_usage: bool
    ) -> AsyncIterator[str]:
        delivered: list[str] = []
        usage: Any = None
        try:
            async for raw in response.content:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    yield "data: [DONE]\n\n"
                    break
                try:
                    chunk = loads(data)
                except ValueError:
                    continue
                if not isinstance(chunk, dict):
                    yield f"data: {data}\n\n"
                    continue
                if chunk.get("usage"):
                    usage = chunk["usage"]
                    if not chunk.get("choices") and not wants_usage:
                        continue  # we asked for usage; the client did not
                for choice in _listed(chunk.get("choices")):
                    if isinstance(choice, dict):
                        delivered.extend(_output_texts(choice.get("delta")))
                yield f"data: {data}\n\n"
        except UPSTREAM_ERRORS as exc:
            error = {
                "error": {
                    "message": f"upstream failed mid-stream: {_describe(exc)}",
                    "type": "upstream_error",
                }
            }
            yield _sse(error)
        finally:
            self.settle_delivered(usage, "".join(delivered))
            response.release()


UPSTREAM_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)

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


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _describe(exc: BaseException) -> str:
    return "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def _event_stream(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
