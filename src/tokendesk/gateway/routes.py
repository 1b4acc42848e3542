"""The OpenAI-compatible gateway (``/v1``): every completion is held, metered and settled.

Hot path: :class:`Shortcut` serves ``POST /v1/chat/completions`` ahead of the
framework's routing, the caller is found in a key cache kept warm in the
background, one transaction (shared with concurrent calls) holds the estimate,
the upstream call goes out on a pooled connection, and the settlement is
queued for the background settler once the reply is on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from typing import Any

import aiohttp
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from yarl import URL

from tokendesk.accounts.auth import actor_from_session_cookie, bearer_key, csrf_refused
from tokendesk.accounts.keycache import CREDENTIALS_CHANGED, KeyCache, KeyOwner
from tokendesk.accounts.models import Role
from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.errors import AppError, InsufficientTokens
from tokendesk.events.bus import EventBus
from tokendesk.gateway.budget import (
    BadParameter,
    ChatRequest,
    UnknownModel,
    hold_size,
    parse_chat,
)
from tokendesk.gateway.completion import Completion, Overruns, loads, openai_error
from tokendesk.gateway.holds import HoldBatcher, Settler
from tokendesk.gateway.model_config import load_models
from tokendesk.gateway.openapi import (
    CHAT_COMPLETIONS_BODY,
    CHAT_COMPLETIONS_RESPONSES,
    MODELS_RESPONSES,
)
from tokendesk.limits import PerUserLimit

router = APIRouter(prefix="/v1", tags=["gateway"])


class Gateway:
    """Per-process gateway state: models, the upstream connection pool, caches, the settler
    (part of the process's :class:`tokendesk.runtime.Runtime`)."""

    def __init__(self, settings: Settings, database: Database, *, bus: EventBus) -> None:
        self.settings = settings
        self.database = database
        self.bus = bus
        self.models = load_models(settings)
        self.upstream_urls = {
            name: URL(model.base_url.rstrip("/") + "/chat/completions")
            for name, model in self.models.items()
            if not model.is_demo
        }
        self.keys = KeyCache(database, ttl_seconds=settings.key_cache_seconds)
        self.settler = Settler(database, keys_used=self.keys.used)
        self.holds = HoldBatcher(database, ttl_seconds=settings.reservation_ttl_seconds)
        self.overruns = Overruns(database)
        self.calls = PerUserLimit(settings.gateway_calls_per_user)
        # Completion ids double as usage event ids, so they must never repeat: a random
        # prefix per gateway and a counter are unique without a system call per call.
        self.id_prefix = f"chatcmpl-{secrets.token_hex(12)}"
        self.ids = itertools.count()
        self._client: aiohttp.ClientSession | None = None
        self._listener: asyncio.Task[None] | None = None

    def watch_credentials(self) -> None:
        """Start (once) forgetting cached keys whenever credentials change anywhere."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._forget_on_change())

    async def _forget_on_change(self) -> None:
        async with self.bus.subscribe(system=True) as queue:
            while True:
                event = await queue.get()
                if event.type == CREDENTIALS_CHANGED:
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

    async def close(self) -> None:
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


class GatewayError(Exception):
    def __init__(self, response: JSONResponse) -> None:
        self.response = response


async def _caller(request: Request, gateway: Gateway) -> KeyOwner:
    key = bearer_key(request)
    if key is None:
        return await _session_caller(request, gateway)
    owner = await gateway.keys.owner_of_key(key)
    if owner is None:
        raise GatewayError(
            openai_error(
                401,
                "invalid or revoked API key",
                type_="invalid_request_error",
                code="invalid_api_key",
            )
        )
    header = gateway.settings.trusted_user_header
    on_behalf = request.headers.get(header) if header else None
    if not on_behalf:
        return owner
    # Only a proxy holding an admin's key may speak for someone else.
    if owner.role not in (Role.ORG_ADMIN, Role.SUPER_ADMIN):
        raise GatewayError(
            openai_error(403, f"{header} needs an org admin's key", type_="permission_error")
        )
    member = await gateway.keys.member(organization_id=owner.organization_id, email=on_behalf)
    if member is None:
        raise GatewayError(
            openai_error(403, f"unknown user {on_behalf!r} in {header}", type_="permission_error")
        )
    return member


async def _session_caller(request: Request, gateway: Gateway) -> KeyOwner:
    """A member of the web app, signed in by cookie (the chat page)."""
    async with gateway.database.transaction(write=False) as session:
        actor = await actor_from_session_cookie(session, request)
    if actor is None:
        raise GatewayError(
            openai_error(
                401,
                "send 'Authorization: Bearer <your tokendesk API key>'",
                type_="invalid_request_error",
                code="invalid_api_key",
            )
        )
    if csrf_refused(request, request.headers.get("x-csrf-token")):
        raise GatewayError(
            openai_error(403, "missing or invalid CSRF token", type_="permission_error")
        )
    return KeyOwner(actor.user_id, actor.home_organization_id, actor.role, actor.email)


@router.get("/models", responses=MODELS_RESPONSES)
async def list_models(request: Request) -> Response:
    gateway = _gateway(request)
    try:
        await _caller(request, gateway)
    except GatewayError as exc:
        return exc.response
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
                }
                for name, model in gateway.models.items()
            ],
        }
    )


def _bad_request(message: str, param: str) -> GatewayError:
    response = openai_error(400, f"{param}: {message}", type_="invalid_request_error", param=param)
    return GatewayError(response)


def _parse(body: Any, gateway: Gateway) -> ChatRequest:
    try:
        return parse_chat(body, gateway.models)
    except BadParameter as exc:
        raise GatewayError(
            openai_error(400, exc.message, type_="invalid_request_error", param=exc.param)
        ) from None
    except UnknownModel as exc:
        raise GatewayError(
            openai_error(
                404,
                f"model {exc.name!r} does not exist; see GET /v1/models",
                type_="invalid_request_error",
                code="model_not_found",
                param="model",
            )
        ) from None


# How long a refused member is told to wait when tokens their calls in flight hold may
# come back: a call's hold returns once it is settled, moments after its reply.
RETRY_AFTER_SECONDS = 1


def _insufficient(exc: InsufficientTokens) -> JSONResponse:
    """429 ``insufficient_quota``. ``Retry-After`` only where waiting can help (the
    member's calls in flight hold tokens that may come back); otherwise the OpenAI
    SDKs' ``x-should-retry: false``, since they retry a 429 by default and a spent
    balance refuses every retry alike."""
    response = openai_error(
        429,
        f"{exc.message}. Open the chat app and use 'Request more tokens', or POST "
        "/api/v1/token-requests with the amount you need.",
        type_="insufficient_quota",
        code="insufficient_quota",
    )
    if exc.could_wait:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    else:
        response.headers["x-should-retry"] = "false"
    return response


# Declared for the OpenAPI schema (and served here if the shortcut is not installed);
# :class:`Shortcut` answers these calls before routing.
@router.post(
    "/chat/completions",
    openapi_extra={"requestBody": CHAT_COMPLETIONS_BODY},
    responses=CHAT_COMPLETIONS_RESPONSES,
)
async def chat_completions(request: Request) -> Response:
    gateway = _gateway(request)
    try:
        caller = await _caller(request, gateway)
        try:
            body = loads(await request.body(), allow_nan=False)
        except ValueError as exc:
            raise _bad_request(f"invalid JSON ({exc})", "body") from None
        chat = _parse(body, gateway)
    except GatewayError as exc:
        return exc.response
    if not gateway.calls.take(caller.user_id):
        return _too_many_calls(gateway.calls.limit)
    try:
        response = await _metered(gateway, caller, chat)
    except BaseException:
        gateway.calls.give_back(caller.user_id)
        raise
    # A streamed reply is still a call in progress: it counts until it has been sent.
    return gateway.calls.until_sent(response, caller.user_id)


def _too_many_calls(limit: int) -> JSONResponse:
    """429 ``rate_limit_exceeded``, as OpenAI's clients know it: they wait ``Retry-After``
    and try again, and by then one of the member's calls has usually finished."""
    response = openai_error(
        429,
        f"too many calls at once: at most {limit} gateway calls per user run at the same "
        "time; try again when one has finished",
        type_="requests",
        code="rate_limit_exceeded",
    )
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


async def _metered(gateway: Gateway, caller: KeyOwner, chat: ChatRequest) -> Response:
    size = hold_size(chat, gateway.settings)
    try:
        hold = await gateway.holds.hold(
            user_id=caller.user_id,
            organization_id=caller.organization_id,
            amount=size.amount,
            at_least=size.at_least,
        )
    except InsufficientTokens as exc:
        return _insufficient(exc)
    except AppError as exc:
        return openai_error(exc.status_code, exc.message, type_="invalid_request_error")
    if caller.key_id is not None:
        gateway.keys.note_used(caller.key_id)
    call = Completion(gateway, caller, chat, hold.id, held=hold.amount)
    if chat.model.is_demo:
        return await call.demo()
    return await call.upstream()


COMPLETIONS_PATH = "/v1/chat/completions"


class Shortcut:
    """Serves ``POST /v1/chat/completions`` before the framework's routing and middleware.

    The gateway is the product's hot path and needs none of what the routing
    stack does per request (matching against every page's route, dependency
    solving, exception middleware), which costs more than the gateway's own
    request handling (see benchmarks/RESULTS.md). Everything else passes
    straight through.
    Installed inside the application's outermost layers, so unhandled errors
    still become a 500 and the request body size limit still applies.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not _is_completions(scope):
            await self.app(scope, receive, send)
            return
        try:
            response = await chat_completions(Request(scope, receive))
        except AppError as exc:
            response = openai_error(exc.status_code, exc.message, type_="invalid_request_error")
        await response(scope, receive, send)


def _is_completions(scope: Scope) -> bool:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path == COMPLETIONS_PATH
