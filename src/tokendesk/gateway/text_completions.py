"""``POST /v1/completions``: the legacy Completions API, metered under the chat rules.

The upstream generates ``best_of`` completions per prompt (``n`` when no ``best_of``)
and bills them all, returning only ``n``: the hold pays for every one of them, each
at the ``max_tokens`` tokendesk sends (OpenAI's default of 16 when the client names
none), and the prompts' estimate. Usage is chat's (``prompt_tokens``,
``completion_tokens``); streamed, it is always asked for with
``stream_options.include_usage`` and relayed only to a client that asked too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from tokendesk.bounds import is_count
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
    ChunkStream,
    event_stream,
    sse,
)
from tokendesk.gateway.embeddings import text_inputs
from tokendesk.gateway.model_config import MAX_N, ModelConfig
from tokendesk.gateway.openapi import COMPLETIONS_BODY, COMPLETIONS_RESPONSES
from tokendesk.gateway.routes import serve_metered
from tokendesk.gateway.tokens import text_tokens

if TYPE_CHECKING:
    pass

router = APIRouter(prefix="/v1", tags=["gateway"])

# OpenAI's default completion budget of the legacy API.
DEFAULT_MAX_TOKENS = 16
# OpenAI's own bound on best_of.
MAX_BEST_OF = 20
MAX_LOGPROBS = 5


@dataclass(frozen=True)
class TextCompletionRequest:
    """A checked legacy completions request."""

    body: dict[str, Any]
    model: ModelConfig
    prompts: list[str | list[int]]
    requested: int
    # Completions the upstream generates (and bills): prompts x best_of.
    n: int
    # Completions returned per prompt.
    returned: int
    echo: bool
    stream: bool
    prompt: int
    # The prompts' own estimate, without the suffix: what an echo repeats.
    echoed: int


def parse_text_completion(body: Any, models: dict[str, ModelConfig]) -> TextCompletionRequest:
    """Check a legacy completions body; raises BadParameter or UnknownModel."""
    if not isinstance(body, dict):
        raise BadParameter("body", "the body must be a JSON object")
    model = model_speaking(body, models, "completions")
    prompts = text_inputs(body.get("prompt"), "prompt", MAX_N)
    most = model.max_output_tokens
    requested = count_field(body.get("max_tokens"), "max_tokens", most=most, limit="for this model")
    n = count_field(body.get("n"), "n", most=MAX_N, limit="choices per call") or 1
    best_of = count_field(body.get("best_of"), "best_of", most=MAX_BEST_OF, limit="per prompt")
    if best_of is not None and best_of < n:
        raise BadParameter("best_of", "must be at least n")
    generated = len(prompts) * (best_of or n)
    if generated > MAX_N:
        raise BadParameter(
            "best_of" if best_of else "n",
            f"at most {MAX_N} completions per call (prompts times best_of or n); "
            f"this one asks for {generated}",
        )
    if generated > 1 and not model.allow_n:
        raise BadParameter("n", f"model {model.name!r} answers one completion per call")
    echo = body.get("echo")
    if echo is not None and not isinstance(echo, bool):
        raise BadParameter("echo", "must be true or false")
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise BadParameter("suffix", "must be a string")
    logprobs = body.get("logprobs")
    if logprobs is not None and not is_count(logprobs, maximum=MAX_LOGPROBS):
        raise BadParameter("logprobs", f"must be a whole number from 0 to {MAX_LOGPROBS}")
    own = sum(text_tokens(item) if isinstance(item, str) else len(item) for item in prompts)
    return TextCompletionRequest(
        body=body,
        model=model,
        prompts=prompts,
        requested=requested or DEFAULT_MAX_TOKENS,
        n=generated,
        returned=n,
        echo=bool(echo),
        stream=streamed(body),
        prompt=own + text_tokens(suffix or ""),
        echoed=own * n if echo else 0,
    )


class TextCompletion(BudgetedCall[TextCompletionRequest]):
    """One metered legacy completion."""

    endpoint = "completions"

    def counted(self, delivered: str) -> int:
        # An echoed prompt comes back in the text; it is billed as prompt, not output.
        return max(text_tokens(delivered) - self.request.echoed, 0)

    async def upstream(self) -> Response:
        payload = dict(self.request.body)
        payload["model"] = self.model.upstream_model or self.model.name
        payload.pop("user", None)
        payload["max_tokens"] = self.budget
        if self.request.stream:
            payload["stream_options"] = {
                **(payload.get("stream_options") or {}),
                "include_usage": True,
            }
        response = await self.post(payload)
        if isinstance(response, Response):
            return response
        if self.request.stream:
            options = self.request.body.get("stream_options") or {}
            reader = ChunkStream(bool(options.get("include_usage")), _choice_text)
            return event_stream(self.relay(response, reader))
        read = await self.read_json(response)
        if isinstance(read, Response):
            return read
        content, data = read
        data = data if isinstance(data, dict) else {}
        choices = data.get("choices")
        delivered = "".join(
            text
            for choice in (choices if isinstance(choices, list) else [])
            if isinstance(choice, dict)
            for text in _choice_text(choice)
        )
        self.settle_delivered(data.get("usage"), delivered)
        return Response(content=content, media_type="application/json")

    # -- the built-in demo model ---------------------------------------------------------

    def _texts(self) -> list[tuple[int, str, str]]:
        """Each returned choice: its index, what it echoes and the demo's reply."""
        choices = []
        for number, prompt in enumerate(self.request.prompts):
            said = prompt if isinstance(prompt, str) else f"{len(prompt)} token ids"
            reply = demo_model.compose_reply([{"role": "user", "content": said}], self.budget)
            echoed = said if self.request.echo and isinstance(prompt, str) else ""
            for copy in range(self.request.returned):
                choices.append((number * self.request.returned + copy, echoed, reply))
        return choices

    async def demo(self) -> Response:
        choices = self._texts()
        # The demo generates exactly what it returns (its best_of picks the first).
        completion = sum(text_tokens(reply) for _, _, reply in choices)
        usage = {
            "prompt_tokens": self.estimate_prompt,
            "completion_tokens": completion,
            "total_tokens": self.estimate_prompt + completion,
        }
        created = int(time.time())
        if not self.request.stream:
            self.settle(self.estimate_prompt, completion)
            return JSONResponse(
                {
                    **self._object(created),
                    "choices": [
                        _choice(index, echoed + reply, "length" if self._full(reply) else "stop")
                        for index, echoed, reply in choices
                    ],
                    "usage": usage,
                }
            )
        options = self.request.body.get("stream_options") or {}

        async def events() -> AsyncIterator[str]:
            delivered = ""
            try:
                for index, echoed, reply in choices:
                    if echoed:
                        yield sse({**self._object(created), "choices": [_choice(index, echoed)]})
                    for piece in demo_model.chunks(reply):
                        delivered += piece
                        self.first_output()
                        yield sse({**self._object(created), "choices": [_choice(index, piece)]})
                        await asyncio.sleep(DEMO_DELAY_SECONDS)
                    finish = "length" if self._full(reply) else "stop"
                    yield sse({**self._object(created), "choices": [_choice(index, "", finish)]})
                if options.get("include_usage"):
                    yield sse({**self._object(created), "choices": [], "usage": usage})
                yield "data: [DONE]\n\n"
                self.settle(self.estimate_prompt, completion)
            finally:
                # A member who stops the reply pays for the words they received.
                self.outcome = "cut"
                self.settle_delivered(None, delivered)

        return event_stream(events())

    def _full(self, reply: str) -> bool:
        return text_tokens(reply) >= self.budget

    def _object(self, created: int) -> dict[str, Any]:
        return {
            "id": f"cmpl-{self.id}",
            "object": "text_completion",
            "created": created,
            "model": self.model.name,
        }


def _choice(index: int, text: str, finish: str | None = None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


def _choice_text(choice: dict[str, Any]) -> Iterator[str]:
    text = choice.get("text")
    if isinstance(text, str):
        yield text


@router.post(
    "/completions",
    openapi_extra={"requestBody": COMPLETIONS_BODY},
    responses=COMPLETIONS_RESPONSES,
)
async def create_completion(request: Request) -> Response:
    return await serve_metered(request, parse_text_completion, TextCompletion.plan)
