"""One metered completion: relayed to an upstream or answered by the demo model.

A completion knows its hold and settles it exactly once: with the usage the
upstream reported, else with what was actually delivered, and releases it
untouched when nothing was.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tokendesk.accounts.keycache import KeyOwner
from tokendesk.metering import demo_model
from tokendesk.metering.holds import Settlement, release
from tokendesk.metering.model_config import ModelConfig
from tokendesk.metering.service import UsageInput
from tokendesk.metering.tokens import text_tokens, weighted

if TYPE_CHECKING:
    from tokendesk.metering.gateway import Gateway

DEMO_DELAY_SECONDS = 0.02

# Completion ids double as usage event ids, so they must never repeat: a random
# prefix per process and a counter are unique without a system call per call.
_ID_PREFIX = secrets.token_hex(12)
_ids = itertools.count()


def openai_error(status: int, message: str, *, type_: str, code: str | None = None) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": type_, "param": None, "code": code}},
    )


class Completion:
    """One metered completion: knows its hold and settles it exactly once."""

    def __init__(
        self, gateway: Gateway, caller: KeyOwner, model: ModelConfig, hold_id: int, prompt: int
    ) -> None:
        self.gateway = gateway
        self.caller = caller
        self.model = model
        self.hold_id = hold_id
        self.estimate_prompt = prompt
        self.id = f"chatcmpl-{_ID_PREFIX}{next(_ids):x}"
        self._done = False

    def settle(self, prompt: int, completion: int) -> None:
        if self._done:
            return
        self._done = True
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
                    total_tokens=weighted(prompt + completion, self.model.weight),
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
        """Charge what the upstream reported, else what was actually delivered."""
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self.settle(int(usage.get("prompt_tokens") or 0), int(usage["completion_tokens"]))
        elif delivered:
            self.settle(self.estimate_prompt, text_tokens(delivered))
        else:
            # Nothing reached the member: the whole hold goes back.
            self.settle(0, 0)

    # -- the built-in demo model ---------------------------------------------------------

    async def demo(self, messages: list[Any], max_tokens: int | None, stream: bool) -> Response:
        reply = demo_model.compose_reply(messages, max_tokens)
        usage = demo_model.usage_for(messages, reply)
        created = int(time.time())
        if not stream:
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

    async def upstream(self, body: dict[str, Any], stream: bool) -> Response:
        payload = dict(body)
        payload["model"] = self.model.upstream_model or self.model.name
        payload.pop("user", None)
        if stream:
            options = dict(payload.get("stream_options") or {})
            options["include_usage"] = True
            payload["stream_options"] = options
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
        if not stream:
            return await self._whole(response)
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
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
            data = json.loads(content)
        except ValueError:
            await self.release()
            return openai_error(502, "upstream sent invalid JSON", type_="upstream_error")
        delivered = "".join(
            str((choice.get("message") or {}).get("content") or "")
            for choice in data.get("choices") or []
            if isinstance(choice, dict)
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
                    chunk = json.loads(data)
                except ValueError:
                    continue
                if chunk.get("usage"):
                    usage = chunk["usage"]
                    if not chunk.get("choices") and not wants_usage:
                        continue  # we asked for usage; the client did not
                for choice in chunk.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        delivered.append(content)
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
