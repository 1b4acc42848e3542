"""What a chat call may cost, decided before it goes upstream.

tokendesk, not the client, sets the completion budget of every call and sends
exactly that upstream, so the hold is the ceiling of what the call can cost:
the prompt estimate plus the budget of each choice. The client's own
``max_tokens`` or ``max_completion_tokens`` may only lower it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from tokendesk.config import Settings
from tokendesk.gateway.model_config import MAX_N, ModelConfig
from tokendesk.gateway.tokens import prompt_tokens

BUDGET_FIELDS = ("max_tokens", "max_completion_tokens")
# Fields no chat client needs that let an upstream generate more than the hold pays for:
# best_of samples choices that are never returned (nor counted), and some proxies merge
# a literal extra_body into the request, budget fields and n included. OpenAI's own API
# refuses both on chat calls; the SDKs send extra_body's contents at the top level.
REFUSED_FIELDS = ("best_of", "extra_body")


class BadParameter(Exception):
    """A request field tokendesk refuses (a 400 naming ``param``)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = f"{param}: {message}"


class UnknownModel(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@dataclass(frozen=True)
class ChatRequest:
    """A checked chat completion request."""

    body: dict[str, Any]
    model: ModelConfig
    messages: list[Any]
    # The completion budget per choice the client asked for, if any.
    requested: int | None
    n: int
    stream: bool
    # Tokens the upstream will bill as input, estimated (unweighted).
    prompt: int


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def count_field(value: Any, param: str, *, most: int, limit: str) -> int | None:
    """``value`` as a count from 1 to ``most`` (``limit`` says whose), or None if absent."""
    if value is None:
        return None
    if not _is_int(value):
        raise BadParameter(param, "must be an integer")
    if value < 1:
        raise BadParameter(param, "must be at least 1")
    if value > most:
        raise BadParameter(param, f"must be at most {most} {limit}")
    return int(value)


def model_speaking(body: dict[str, Any], models: dict[str, ModelConfig], api: str) -> ModelConfig:
    """The model ``body`` names, if its upstream speaks ``api``; raises BadParameter or
    UnknownModel. A call on an API the model does not speak is refused before any hold:
    tokendesk passes calls through and translates none."""
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise BadParameter("model", "required")
    model = models.get(name)
    if model is None:
        raise UnknownModel(name)
    if api not in model.apis:
        raise BadParameter(
            "model",
            f"model {name!r} does not speak the {api} API; it speaks {', '.join(model.apis)} "
            "(see GET /v1/models)",
        )
    return model


def parse_chat(body: Any, models: dict[str, ModelConfig]) -> ChatRequest:
    """Check a chat completion body; raises BadParameter or UnknownModel."""
    if not isinstance(body, dict):
        raise BadParameter("body", "the body must be a JSON object")
    model = model_speaking(body, models, "chat")
    name = model.name
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadParameter("messages", "a non-empty list is required")
    for field in REFUSED_FIELDS:
        if body.get(field) is not None:
            raise BadParameter(field, "not accepted on chat calls")
    most = model.max_output_tokens
    asked = [
        count
        for field in BUDGET_FIELDS
        if (count := count_field(body.get(field), field, most=most, limit="for this model"))
        is not None
    ]
    n = count_field(body.get("n"), "n", most=MAX_N, limit="choices per call") or 1
    if n > 1 and not model.allow_n:
        raise BadParameter("n", f"model {name!r} answers one choice per call")
    stream = streamed(body)
    return ChatRequest(
        body=body,
        model=model,
        messages=messages,
        requested=min(asked) if asked else None,
        n=n,
        stream=stream,
        prompt=prompt_tokens(messages, body),
    )


class Budgeted(Protocol):
    """What sizes a call's hold on any API: its model, the prompt estimate, the output
    budget per generation the client asked for (if any) and how many generations."""

    @property
    def model(self) -> ModelConfig: ...
    @property
    def prompt(self) -> int: ...
    @property
    def requested(self) -> int | None: ...
    @property
    def n(self) -> int: ...


def streamed(body: dict[str, Any]) -> bool:
    """Whether the call streams: ``stream`` a boolean, ``stream_options`` an object."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadParameter("stream", "must be true or false")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadParameter("stream_options", "must be an object")
    return bool(stream)


@dataclass(frozen=True)
class HoldSize:
    """Tokens to hold: ``amount`` at most, and at the very least ``at_least``."""

    amount: int
    at_least: int


def hold_size(request: Budgeted, settings: Settings) -> HoldSize:
    """A client's own budget is held whole; without one the call takes the default
    budget (within the model's limit) or, with little left, what the balance covers
    down to the floor. The prompt is priced as input, the budget as output."""
    model = request.model
    if request.requested is not None:
        return hold_between(request, budget=request.requested, floor=request.requested)
    budget = min(settings.gateway_default_max_tokens, model.max_output_tokens)
    return hold_between(
        request, budget=budget, floor=min(settings.gateway_min_completion_tokens, budget)
    )


def hold_between(request: Budgeted, *, budget: int, floor: int) -> HoldSize:
    """Tokens to hold for ``budget`` output tokens per generation, or, with less left,
    for at the least ``floor``: the prompt priced as input, the budget as output."""
    model, n, prompt = request.model, request.n, request.prompt
    return HoldSize(
        model.ceiling(prompt=prompt, completion=n * budget),
        model.ceiling(prompt=prompt, completion=n * floor),
    )


def completion_budget(request: Budgeted, held: int) -> int:
    """The completion budget per generation that ``held`` tokens pay for."""
    budget = request.model.completion_within(held, prompt=request.prompt) // request.n
    if request.requested is not None:
        budget = min(budget, request.requested)
    return max(min(budget, request.model.max_output_tokens), 1)


def upstream_body(request: ChatRequest, budget: int) -> dict[str, Any]:
    """The client's body as the upstream gets it: the upstream's own model name, the
    completion budget in the field that upstream reads, and usage always asked for."""
    payload = dict(request.body)
    payload["model"] = request.model.upstream_model or request.model.name
    payload.pop("user", None)
    for field in BUDGET_FIELDS:
        payload.pop(field, None)
    payload[request.model.max_tokens_field] = budget
    if request.stream:
        options = dict(payload.get("stream_options") or {})
        options["include_usage"] = True
        payload["stream_options"] = options
    return payload
