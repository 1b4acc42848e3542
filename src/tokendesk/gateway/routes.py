"""The OpenAI-compatible gateway (``/v1``): every completion is held, metered and settled.

Hot path: ``gateway/shortcut.py`` serves every metered API ahead of the
framework's routing; :func:`serve_metered` finds the caller in a key cache kept
warm in the background, one transaction (shared with concurrent calls) holds the
estimate, the upstream call goes out on a pooled connection, and the settlement
is queued for the background settler once the reply is on its way. Each API
(chat here, the others in their own modules) brings its body's checks and its
reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from yarl import URL

from tokendesk.accounts.integrations import is_integration_key
from tokendesk.accounts.keycache import CREDENTIALS_CHANGED, KeyCache, KeyOwner
from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.errors import AppError, InsufficientTokens
from tokendesk.events.bus import RESYNC, EventBus
from tokendesk.gateway.budget import (
    BadParameter,
    ChatRequest,
    HoldSize,
    UnknownModel,
    hold_size,
    parse_chat,
)
from tokendesk.gateway.callers import (
    GatewayError,
    find_caller,
    integration_of,
    named_caller,
    names_someone,
)
from tokendesk.gateway.completion import Completion, Overruns, loads
from tokendesk.gateway.dialects import (
    OPENAI,
    Dialect,
    ErrorShape,
    anthropic_key,
    app_error,
    openai_error,
)
from tokendesk.gateway.holds import Hold, HoldBatcher, Settler
from tokendesk.gateway.model_config import ModelConfig, load_models
from tokendesk.gateway.openapi import (
    BALANCE_RESPONSES,
    CHAT_COMPLETIONS_BODY,
    CHAT_COMPLETIONS_RESPONSES,
    MODELS_RESPONSES,
)
from tokendesk.gateway.schemas import ChatAppBalance
from tokendesk.gateway.standing import Thresholds, balance_for, standing_headers
from tokendesk.limits import PerUserLimit
from tokendesk.observability.context import note_caller
from tokendesk.observability.metrics import Metrics, endpoint_of
from tokendesk.token_requests.links import request_link

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["gateway"])
T = TypeVar("T")

# Where each API the gateway serves is called on an upstream, below its base URL.
UPSTREAM_PATHS = {
    "chat": "/chat/completions",
    "responses": "/responses",
    "embeddings": "/embeddings",
    "messages": "/messages",
    "completions": "/completions",
}
# What a checked call holds, and how it is answered once held.
Plan = tuple[HoldSize, Callable[[Hold], Awaitable[Response]]]


class Gateway:
    """Per-process gateway state: models, the upstream connection pool, caches, the settler
    (part of the process's :class:`tokendesk.runtime.Runtime`)."""

    def __init__(self, settings: Settings, database: Database, *, bus: EventBus) -> None:
        self.settings = settings
        self.database = database
        self.bus = bus
        self.models = load_models(settings)
        self.metrics = Metrics(models=self.models)
        # Per endpoint, each upstream model's URL for it.
        self.upstream_urls = {
            endpoint: {
                name: URL(model.upstream_base + path)
                for name, model in self.models.items()
                if not model.is_demo and endpoint in model.apis
            }
            for endpoint, path in UPSTREAM_PATHS.items()
        }
        self.keys = KeyCache(database, ttl_seconds=settings.key_cache_seconds)
        self.settler = Settler(
            database,
            keys_used=self.keys.used,
            integrations_used=self.keys.integrations_used,
            metrics=self.metrics,
        )
        self.holds = HoldBatcher(database, ttl_seconds=settings.reservation_ttl_seconds)
        self.overruns = Overruns(database)
        self.calls = PerUserLimit(settings.gateway_calls_per_user)
        self.thresholds = Thresholds(database, ttl_seconds=settings.key_cache_seconds)
        # Call ids double as usage event ids, so they must never repeat: a random part
        # per gateway and a counter are unique without a system call per call.
        self.id_prefix = secrets.token_hex(12)
        self.ids = itertools.count()
        self._client: aiohttp.ClientSession | None = None
        self._listener: asyncio.Task[None] | None = None
        # Calls that hold tokens and have not settled or released them yet. Closing
        # waits for them: on shutdown uvicorn cancels the calls that outlast the grace
        # and starts the lifespan's shutdown at once, while each cut call's cleanup,
        # which settles what it delivered, has yet to run.
        self.unsettled = 0
        self._all_settled = asyncio.Event()
        self._all_settled.set()

    def watch_credentials(self) -> None:
        """Start (once) forgetting cached keys whenever credentials change anywhere."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._forget_on_change())

    async def _forget_on_change(self) -> None:
        async with self.bus.subscribe(system=True) as queue:
            while True:
                event = await queue.get()
                # After a resync a change may have gone unheard: forget them all.
                if event.type in (CREDENTIALS_CHANGED, RESYNC):
                    self.keys.clear()

    @property
    def client(self) -> aiohttp.ClientSession:
        # Created lazily: aiohttp sessions belong to the running event loop.
        if self._client is None or self._client.closed:
            self._client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=512, keepalive_timeout=60),
                # The total bounds a whole call, a stream's last chunk included, so that
                # no call outlives its hold; past it a reply fails and a stream is cut.
                timeout=aiohttp.ClientTimeout(
                    total=self.settings.upstream_deadline_seconds,
                    connect=10.0,
                    sock_read=self.settings.upstream_timeout_seconds,
                ),
                auto_decompress=True,
                # Upstream cookies mean nothing to tokendesk; not parsing them saves work per call.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._client

    def call_opened(self) -> None:
        self.unsettled += 1
        self._all_settled.clear()

    def call_closed(self) -> None:
        self.unsettled -= 1
        if not self.unsettled:
            self._all_settled.set()

    async def close(self) -> None:
        settling = self.settings.shutdown_grace_seconds - self.settings.shutdown_calls_seconds
        try:
            async with asyncio.timeout(settling):
                await self._all_settled.wait()
        except TimeoutError:
            # Their holds stay until they expire, as if the process had been killed.
            log.warning("%d calls were still unsettled when the gateway closed", self.unsettled)
        await self.settler.stop()
        await self.overruns.drain()
        await self.keys.stop()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._client is not None:
            await self._client.close()


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.runtime.gateway
    return gateway


@router.get("/models", responses=MODELS_RESPONSES)
async def list_models(request: Request) -> Response:
    gateway = _gateway(request)
    # OpenAI's clients and Anthropic's list models alike (the latter with x-api-key).
    key = anthropic_key(request)
    try:
        if key is not None and is_integration_key(key):
            # A chat app lists models for everyone, often before any user is signed in
            # (Open WebUI at start-up): the list costs nobody anything, so naming a user
            # is not required, though the one named is provisioned as on a chat call.
            integration = await integration_of(gateway, key)
            if names_someone(integration, request):
                await named_caller(request, gateway, key, None)
        else:
            await find_caller(request, gateway, key_of=anthropic_key)
    except GatewayError as exc:
        return exc.response
    names = list(gateway.models)
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {
                    "id": name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "tokendesk-demo" if model.is_demo else "upstream",
                    "demo": model.is_demo,
                    "apis": model.apis,
                    # Anthropic's fields for a model, beside OpenAI's.
                    "type": "model",
                    "display_name": name,
                    "created_at": "1970-01-01T00:00:00Z",
                }
                for name, model in gateway.models.items()
            ],
            # Anthropic's paging: every model is on the one page.
            "has_more": False,
            "first_id": names[0] if names else None,
            "last_id": names[-1] if names else None,
        }
    )


@router.get(
    "/tokendesk/balance",
    response_model=ChatAppBalance,
    responses=BALANCE_RESPONSES,
    summary="The calling person's balance, for chat apps",
)
async def chat_app_balance(request: Request) -> Response:
    """The balance of whoever a gateway call with the same credentials would bill: a
    personal key's owner, or the person an integration's chat app names in its headers
    (or in ``?user=``, the body field of a call). Reads only, unless the person named is
    new and provisioned, as on a chat call."""
    gateway = _gateway(request)
    user = request.query_params.get("user")
    try:
        caller = await find_caller(request, gateway, None if user is None else {"user": user})
    except GatewayError as exc:
        return exc.response
    async with gateway.database.transaction(write=False) as session:
        balance = await balance_for(
            session, caller=caller, settings=gateway.settings, base=str(request.base_url)
        )
    return JSONResponse(balance.model_dump(mode="json"), headers={"Cache-Control": "no-store"})


def _bad_request(message: str, param: str) -> GatewayError:
    return GatewayError(400, f"{param}: {message}", type_="invalid_request_error", param=param)


def _parsed(parse: Callable[[Any, dict[str, ModelConfig]], T], body: Any, gateway: Gateway) -> T:
    """``body`` checked by ``parse``, or a 400 naming the field or a 404 for the model."""
    try:
        return parse(body, gateway.models)
    except BadParameter as exc:
        raise GatewayError(
            400, exc.message, type_="invalid_request_error", param=exc.param
        ) from None
    except UnknownModel as exc:
        raise GatewayError(
            404,
            f"model {exc.name!r} does not exist; see GET /v1/models",
            type_="invalid_request_error",
            code="model_not_found",
            param="model",
        ) from None


# How long a refused member is told to wait when tokens their calls in flight hold may
# come back: a call's hold returns once it is settled, moments after its reply.
RETRY_AFTER_SECONDS = 1


def _insufficient(
    exc: InsufficientTokens, *, settings: Settings, user_id: int, error: ErrorShape
) -> JSONResponse:
    """429 ``insufficient_quota`` (Anthropic's ``rate_limit_error``) with the member's
    personal request link: the message reaches them in whatever chat app they use, which
    may have no way to ask for more. ``Retry-After`` only where waiting can help (the
    member's calls in flight hold tokens that may come back); otherwise the SDKs'
    ``x-should-retry: false`` (OpenAI's and Anthropic's alike), since they retry a 429
    by default and a spent balance refuses every retry alike."""
    link = request_link(settings, user_id=user_id)
    response = error(
        429,
        f"{exc.shortfall[:1].upper()}{exc.shortfall[1:]}. Ask for more tokens here: {link}",
        type_="insufficient_quota",
        code="insufficient_quota",
    )
    if exc.could_wait:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    else:
        response.headers["x-should-retry"] = "false"
    return response


# Routed for the OpenAPI schema (and served here if the shortcut is not installed);
# gateway/shortcut.py answers these calls before routing.
@router.post(
    "/chat/completions",
    openapi_extra={"requestBody": CHAT_COMPLETIONS_BODY},
    responses=CHAT_COMPLETIONS_RESPONSES,
)
async def chat_completions(request: Request) -> Response:
    return await serve_metered(request, parse_chat, _chat_plan)


def _chat_plan(gateway: Gateway, caller: KeyOwner, chat: ChatRequest) -> Plan:
    def answer(hold: Hold) -> Awaitable[Response]:
        call = Completion(gateway, caller, chat, hold.id, held=hold.amount)
        return call.demo() if chat.model.is_demo else call.upstream()

    return hold_size(chat, gateway.settings), answer


async def serve_metered(
    request: Request,
    parse: Callable[[Any, dict[str, ModelConfig]], T],
    plan: Callable[[Gateway, KeyOwner, T], Plan],
    *,
    dialect: Dialect = OPENAI,
) -> Response:
    """A metered call on any of the gateway's APIs: the caller found (by the key
    ``dialect`` reads), the body checked by ``parse``, and the call ``plan`` describes
    held, answered and settled; every refusal in the ``dialect``'s error shape."""
    gateway = _gateway(request)
    endpoint = endpoint_of(request.scope["path"], request.scope.get("root_path", ""))
    model: str | None = None
    try:
        caller, call = await checked_call(request, gateway, parse, dialect=dialect)
        model = getattr(getattr(call, "model", None), "name", None)  # for the metrics' label
    except GatewayError as exc:
        outcome = "unauthorized" if exc.status in (401, 403) else "invalid"
        gateway.metrics.call(model, endpoint, outcome)
        return exc.render(dialect.error)
    if not gateway.calls.take(caller.user_id):
        gateway.metrics.call(model, endpoint, "rate_limited")
        return _too_many_calls(gateway.calls.limit, dialect.error)
    try:
        size, answer = plan(gateway, caller, call)
        response = await _metered(
            gateway, caller, size, answer, request, dialect.error, model=model, endpoint=endpoint
        )
    except BaseException:
        gateway.calls.give_back(caller.user_id)
        raise
    # A streamed reply is still a call in progress: it counts until it has been sent.
    return gateway.calls.until_sent(response, caller.user_id)


async def checked_call(
    request: Request,
    gateway: Gateway,
    parse: Callable[[Any, dict[str, ModelConfig]], T],
    *,
    dialect: Dialect,
) -> tuple[KeyOwner, T]:
    """Who is calling and their body, checked by ``parse``; raises GatewayError."""
    try:
        body = loads(await request.body(), allow_nan=False)
    except ValueError as exc:
        # Who is calling is checked first all the same: a stranger learns nothing.
        await find_caller(request, gateway, key_of=dialect.key)
        raise _bad_request(f"invalid JSON ({exc})", "body") from None
    caller = await find_caller(request, gateway, body, key_of=dialect.key)
    note_caller(request.scope, user_id=caller.user_id, key_id=caller.key_id)
    return caller, _parsed(parse, body, gateway)


def _too_many_calls(limit: int, error: ErrorShape = openai_error) -> JSONResponse:
    """429 ``rate_limit_exceeded``, as OpenAI's clients know it (Anthropic's a
    ``rate_limit_error``): they wait ``Retry-After`` and try again, and by then one of
    the member's calls has usually finished."""
    response = error(
        429,
        f"too many calls at once: at most {limit} gateway calls per user run at the same "
        "time; try again when one has finished",
        type_="requests",
        code="rate_limit_exceeded",
    )
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


async def _metered(
    gateway: Gateway,
    caller: KeyOwner,
    size: HoldSize,
    answer: Callable[[Hold], Awaitable[Response]],
    request: Request,
    error: ErrorShape,
    *,
    model: str | None,
    endpoint: str,
) -> Response:
    try:
        hold = await gateway.holds.hold(
            user_id=caller.user_id,
            organization_id=caller.organization_id,
            amount=size.amount,
            at_least=size.at_least,
        )
    except InsufficientTokens as exc:
        gateway.metrics.call(model, endpoint, "refused_quota")
        return _insufficient(exc, settings=gateway.settings, user_id=caller.user_id, error=error)
    except AppError as exc:
        outcome = "unavailable" if exc.status_code >= 500 else "invalid"
        gateway.metrics.call(model, endpoint, outcome)
        return app_error(error, exc)
    if caller.key_id is not None:
        gateway.keys.note_used(caller.key_id)
    # Known before the upstream answers: nothing may come between its reply and the relay.
    percent = gateway.thresholds.cached(caller.organization_id)
    if percent is None:
        percent = await gateway.thresholds.low_percent(caller.organization_id)
    response = await answer(hold)
    if response.status_code < 400:
        response.headers.update(
            standing_headers(
                hold,
                low_percent=percent,
                link=lambda: request_link(
                    gateway.settings, user_id=caller.user_id, base=str(request.base_url)
                ),
            )
        )
    return response
