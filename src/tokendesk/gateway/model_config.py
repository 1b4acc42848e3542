"""The configured upstream models (or the built-in demo model when none is configured)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from tokendesk.config import Settings

DEMO_MODEL = "demo"
DEFAULT_MAX_OUTPUT_TOKENS = 16_384
# The most choices one call may ask for (the OpenAI API's own limit).
MAX_N = 128


class ModelConfig(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    base_url: str = Field(
        default="", description="Upstream OpenAI-compatible base, e.g. http://host:8080/v1"
    )
    api_key: str | None = None
    # Tokens debited = ceil(reported tokens x weight): an expensive model can cost more.
    weight: float = Field(default=1.0, gt=0, le=1000)
    # The upstream's own name for the model, when it differs from the name shown to members.
    upstream_model: str | None = None
    # The largest completion budget a client may ask for, per choice.
    max_output_tokens: int = Field(default=DEFAULT_MAX_OUTPUT_TOKENS, ge=1, le=10_000_000)
    # The field the upstream reads the completion budget from: newer OpenAI models want
    # max_completion_tokens (which also bounds reasoning tokens), most others max_tokens.
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    # Whether a call may ask for several choices (n > 1); each one is held and paid for.
    allow_n: bool = True

    @property
    def is_demo(self) -> bool:
        return self.base_url == ""


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
        models = [ModelConfig(name=DEMO_MODEL)]
    floor = settings.gateway_min_completion_tokens
    for model in models:
        if model.max_output_tokens < floor:
            raise SystemExit(
                f"TOKENDESK_MODELS: model {model.name!r} has max_output_tokens "
                f"{model.max_output_tokens}, below the "
                f"TOKENDESK_GATEWAY_MIN_COMPLETION_TOKENS of {floor}"
            )
    return {model.name: model for model in models}
