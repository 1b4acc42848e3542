"""The configured upstream models (or the built-in demo model when none is configured)."""

from __future__ import annotations

import json
import math
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError

from tokendesk.config import Settings

DEMO_MODEL = "demo"
DEFAULT_MAX_OUTPUT_TOKENS = 16_384
# The most choices one call may ask for (the OpenAI API's own limit).
MAX_N = 128
# The APIs a model's upstream may speak, by the endpoint each is called on.
APIS = ("chat", "responses", "embeddings", "messages", "completions")
# The APIs the gateway serves so far: what the built-in demo model answers.
SERVED_APIS = ("chat", "responses", "embeddings", "messages", "completions")


Weight = Annotated[float, Field(gt=0, le=1000)]


class Weights(BaseModel):
    """A model's price per token kind, where it differs from its ``weight``."""

    model_config = ConfigDict(extra="forbid")

    # Input tokens the upstream did not serve from its prompt cache.
    input: Weight | None = None
    # Output tokens, reasoning included (the upstream bills reasoning as output).
    output: Weight | None = None
    # Input tokens served from the upstream's prompt cache; absent, they cost what
    # input does: an upstream that caches without a discount bills them as input.
    cached_input: Weight | None = None


def _exact(weight: float) -> Decimal:
    # The weight as written (1.1, not the binary float just above it), so that
    # 100 tokens at 1.1 cost 110, never 111.
    return Decimal(repr(weight))


class ModelConfig(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    # The kind of upstream: OpenAI-compatible (its key sent as a bearer token, each API
    # called below base_url) or Anthropic's (its key sent as x-api-key, the Messages API
    # called at {base_url}/v1/messages, as on https://api.anthropic.com).
    api: Literal["openai", "anthropic"] = "openai"
    base_url: str = Field(
        default="",
        description="Upstream base: OpenAI-compatible e.g. http://host:8080/v1, "
        "Anthropic e.g. https://api.anthropic.com",
    )
    api_key: str | None = None
    # Tokens debited = ceil(reported tokens x weight): an expensive model can cost more.
    weight: Weight = 1.0
    # Per-kind weights; a kind left out costs ``weight`` (cached input: the input's).
    weights: Weights = Field(default_factory=Weights)
    # The upstream's own name for the model, when it differs from the name shown to members.
    upstream_model: str | None = None
    # The largest completion budget a client may ask for, per choice.
    max_output_tokens: int = Field(default=DEFAULT_MAX_OUTPUT_TOKENS, ge=1, le=10_000_000)
    # The field the upstream reads the completion budget from: newer OpenAI models want
    # max_completion_tokens (which also bounds reasoning tokens), most others max_tokens.
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    # Whether a call may ask for several choices (n > 1); each one is held and paid for.
    allow_n: bool = True
    # The APIs its upstream speaks (APIS): a call on any other is refused before a hold.
    # Checked in load_models, so that an unknown one names its model. Left out: chat
    # for an OpenAI-compatible upstream, messages for an Anthropic one.
    apis: list[str] = Field(default_factory=lambda: ["chat"], min_length=1, max_length=len(APIS))

    # The exact weight of each kind (input, cached input, output), set once at load.
    _prices: tuple[Decimal, Decimal, Decimal] = PrivateAttr()
    _flat: bool = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        if self.api == "anthropic" and "apis" not in self.model_fields_set:
            self.apis = ["messages"]
        given = self.weights
        input_ = given.input if given.input is not None else self.weight
        cached = given.cached_input if given.cached_input is not None else input_
        output = given.output if given.output is not None else self.weight
        self._prices = (_exact(input_), _exact(cached), _exact(output))
        self._flat = input_ == cached == output == 1.0

    @property
    def is_demo(self) -> bool:
        return self.base_url == ""

    @property
    def upstream_base(self) -> str:
        """What each API's path is appended to: an Anthropic base lacks the ``/v1``."""
        base = self.base_url.rstrip("/")
        return f"{base}/v1" if self.api == "anthropic" else base

    def charge(self, *, prompt: int, completion: int, cached: int = 0) -> int:
        """Tokens a call is debited: its uncached input, cached input and output, each
        at its kind's weight, rounded up once. ``cached`` is part of ``prompt``."""
        if self._flat:
            return prompt + completion
        cached = min(max(cached, 0), prompt)
        input_, cached_input, output = self._prices
        cost = (prompt - cached) * input_ + cached * cached_input + completion * output
        return math.ceil(cost)

    def ceiling(self, *, prompt: int, completion: int) -> int:
        """The most a call of ``prompt`` input and ``completion`` output tokens can be
        charged, however much of its input the upstream serves from its cache: what
        it must hold."""
        if self._flat:
            return prompt + completion
        # The charge is linear in the cached share, so its most is at one end.
        return max(
            self.charge(prompt=prompt, completion=completion),
            self.charge(prompt=prompt, completion=completion, cached=prompt),
        )

    def completion_within(self, held: int, *, prompt: int) -> int:
        """The most output tokens a hold of ``held`` pays for after ``prompt`` input
        tokens (negative when it does not cover the input)."""
        if self._flat:
            return held - prompt
        input_, cached_input, output = self._prices
        # In exact arithmetic the ceiling of this many is at most ``held``, and of one
        # more above it: :meth:`ceiling` inverted.
        return math.floor((held - prompt * max(input_, cached_input)) / output)

    def tokens_within(self, held: int) -> int:
        """The most tokens, of any kind, whose charge fits in ``held``."""
        if self._flat:
            return held
        return math.floor(held / min(self._prices))


_models = TypeAdapter(list[ModelConfig])


def load_models(settings: Settings) -> dict[str, ModelConfig]:
    """Models by name; the demo model is served whenever no upstream is configured."""
    raw: object = []
    try:
        if settings.models:
            raw = json.loads(settings.models)
        elif settings.models_file:
            raw = tomllib.loads(Path(settings.models_file).read_text()).get("models", [])
        models = _models.validate_python(raw)
    except (ValueError, ValidationError, OSError) as exc:
        raise SystemExit(f"TOKENDESK_MODELS / TOKENDESK_MODELS_FILE is invalid: {exc}") from None
    if not models:
        models = [ModelConfig(name=DEMO_MODEL, apis=list(SERVED_APIS))]
    floor = settings.gateway_min_completion_tokens
    for model in models:
        if model.max_output_tokens < floor:
            raise SystemExit(
                f"TOKENDESK_MODELS: model {model.name!r} has max_output_tokens "
                f"{model.max_output_tokens}, below the "
                f"TOKENDESK_GATEWAY_MIN_COMPLETION_TOKENS of {floor}"
            )
        for api in model.apis:
            if api not in APIS:
                raise SystemExit(
                    f"TOKENDESK_MODELS: model {model.name!r} has {api!r} in apis, "
                    f"which must be among {', '.join(APIS)}"
                )
        _check_anthropic(model)
    return {model.name: model for model in models}


# What an Anthropic upstream speaks: its Messages API, and nothing tokendesk could
# translate into another (it passes calls through).
ANTHROPIC_APIS = ("messages",)


def _check_anthropic(model: ModelConfig) -> None:
    if model.api != "anthropic":
        return
    if model.is_demo:
        raise SystemExit(
            f"TOKENDESK_MODELS: model {model.name!r} has api 'anthropic' but no base_url "
            "(e.g. https://api.anthropic.com)"
        )
    others = [api for api in model.apis if api not in ANTHROPIC_APIS]
    if others:
        raise SystemExit(
            f"TOKENDESK_MODELS: model {model.name!r} has api 'anthropic' and "
            f"{', '.join(others)} in apis: an Anthropic upstream speaks only "
            f"{', '.join(ANTHROPIC_APIS)}, and tokendesk translates no API into another"
        )
