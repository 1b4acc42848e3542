"""``POST /v1/embeddings``: metered under the chat rules, served by the normal router.

An embedding bills its input only, so the hold is the input's estimate (priced at
the model's input weight) and the settlement what the upstream reported in ``usage.prompt_tokens``
when that is believable, else the estimate; output tokens are always 0. Callers,
holds, refusals and the standing headers are the chat completions' own
(:func:`gateway.routes.serve_metered`); only the body and the reply differ.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from tokendesk.bounds import is_count
from tokendesk.gateway import demo_model
from tokendesk.gateway.budget import BadParameter, HoldSize, model_speaking
from tokendesk.gateway.completion import MeteredCall
from tokendesk.gateway.holds import Hold
from tokendesk.gateway.model_config import ModelConfig
from tokendesk.gateway.openapi import EMBEDDINGS_BODY, EMBEDDINGS_RESPONSES
from tokendesk.gateway.routes import Plan, serve_metered
from tokendesk.gateway.tokens import text_tokens

if TYPE_CHECKING:
    from tokendesk.accounts.keycache import KeyOwner
    from tokendesk.gateway.routes import Gateway

router = APIRouter(prefix="/v1", tags=["gateway"])

# OpenAI's own limits per call: inputs in one list, and tokens in all of them (here
# the estimate, which errs high).
MAX_INPUTS = 2048
MAX_INPUT_TOKENS = 300_000
# The largest token id accepted: beyond every tokenizer's vocabulary.
MAX_TOKEN_ID = 2**31 - 1
MAX_DIMENSIONS = 65_536
ENCODINGS = ("float", "base64")
INPUT_SHAPES = "a string, a list of strings, a list of token ids or a list of lists of token ids"


@dataclass(frozen=True)
class EmbeddingsRequest:
    """A checked embeddings request."""

    body: dict[str, Any]
    model: ModelConfig
    # Each input to embed: a text or a token array.
    inputs: list[str | list[int]]
    # Tokens the upstream will bill, estimated (unweighted): a token array counts its length.
    prompt: int
    encoding: str
    dimensions: int | None


def parse_embeddings(body: Any, models: dict[str, ModelConfig]) -> EmbeddingsRequest:
    """Check an embeddings body; raises BadParameter or UnknownModel."""
    if not isinstance(body, dict):
        raise BadParameter("body", "the body must be a JSON object")
    model = model_speaking(body, models, "embeddings")
    inputs = text_inputs(body.get("input"))
    prompt = sum(text_tokens(item) if isinstance(item, str) else len(item) for item in inputs)
    if prompt > MAX_INPUT_TOKENS:
        raise BadParameter(
            "input", f"at most {MAX_INPUT_TOKENS:,} tokens per call; this one has about {prompt:,}"
        )
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in ENCODINGS:
        raise BadParameter("encoding_format", f"must be one of {', '.join(ENCODINGS)}")
    dimensions = body.get("dimensions")
    if dimensions is not None and not (
        is_count(dimensions, maximum=MAX_DIMENSIONS) and dimensions > 0
    ):
        raise BadParameter("dimensions", f"must be a whole number from 1 to {MAX_DIMENSIONS}")
    return EmbeddingsRequest(
        body=body,
        model=model,
        inputs=inputs,
        prompt=prompt,
        encoding=encoding or "float",
        dimensions=dimensions,
    )


def text_inputs(value: Any, param: str = "input", most: int = MAX_INPUTS) -> list[str | list[int]]:
    """``value`` as its texts and token arrays (what embeddings' ``input`` and the legacy
    completions' ``prompt`` take), at most ``most`` of them; raises BadParameter."""
    if isinstance(value, str):
        if not value:
            raise BadParameter(param, "must not be empty")
        return [value]
    if not isinstance(value, list) or not value:
        raise BadParameter(param, f"required: {INPUT_SHAPES}")
    if all(_is_token(item) for item in value):
        return [value]
    if len(value) > most:
        raise BadParameter(param, f"at most {most} inputs per call")
    if all(isinstance(item, str) for item in value):
        if not all(value):
            raise BadParameter(param, "must not hold an empty string")
        return list(value)
    if all(isinstance(item, list) and all(_is_token(token) for token in item) for item in value):
        if not all(value):
            raise BadParameter(param, "must not hold an empty token list")
        return list(value)
    raise BadParameter(param, f"must be {INPUT_SHAPES}")


def _is_token(value: Any) -> bool:
    return is_count(value, maximum=MAX_TOKEN_ID)


class Embedding(MeteredCall):
    """One metered embeddings call."""

    endpoint = "embeddings"

    def __init__(
        self,
        gateway: Gateway,
        caller: KeyOwner,
        request: EmbeddingsRequest,
        hold_id: int,
        *,
        held: int,
    ) -> None:
        super().__init__(gateway, caller, request.model, hold_id, held=held, prompt=request.prompt)
        self.request = request

    async def demo(self) -> Response:
        dimensions = self.request.dimensions or demo_model.DEMO_DIMENSIONS
        vectors = [demo_model.embedding(item, dimensions) for item in self.request.inputs]
        usage = {"prompt_tokens": self.estimate_prompt, "total_tokens": self.estimate_prompt}
        self.settle(self.estimate_prompt, 0)
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "object": "embedding",
                        "index": index,
                        "embedding": demo_model.encoded(vector)
                        if self.request.encoding == "base64"
                        else vector,
                    }
                    for index, vector in enumerate(vectors)
                ],
                "model": self.model.name,
                "usage": usage,
            }
        )

    async def upstream(self) -> Response:
        payload = dict(self.request.body)
        payload["model"] = self.model.upstream_model or self.model.name
        payload.pop("user", None)
        response = await self.post(payload)
        if isinstance(response, Response):
            return response
        read = await self.read_json(response)
        if isinstance(read, Response):
            return read
        content, data = read
        usage = data.get("usage") if isinstance(data, dict) else None
        # The upstream took the input once it answered: the call pays for it.
        self.settle(self._believable_input(usage), 0)
        return Response(content=content, media_type="application/json")

    def _believable_input(self, usage: Any) -> int:
        """The input tokens the upstream reported if believable, else the estimate."""
        if usage is None:
            return self.estimate_prompt
        prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        if is_count(prompt) and 0 < prompt <= self.usage_ceiling(0):
            return prompt
        self.unusable(usage)
        return self.estimate_prompt


def _plan(gateway: Gateway, caller: KeyOwner, request: EmbeddingsRequest) -> Plan:
    amount = request.model.ceiling(prompt=request.prompt, completion=0)

    def answer(hold: Hold) -> Awaitable[Response]:
        call = Embedding(gateway, caller, request, hold.id, held=hold.amount)
        return call.demo() if request.model.is_demo else call.upstream()

    return HoldSize(amount, amount), answer


@router.post(
    "/embeddings",
    openapi_extra={"requestBody": EMBEDDINGS_BODY},
    responses=EMBEDDINGS_RESPONSES,
)
async def create_embeddings(request: Request) -> Response:
    return await serve_metered(request, parse_embeddings, _plan)
