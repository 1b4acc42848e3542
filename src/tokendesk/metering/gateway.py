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
import json
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from yarl import URL

from tokendesk.accounts.auth import actor_from_session_cookie, csrf_ok
from tokendesk.accounts.keycache import CREDENTIALS_CHANGED, KeyCache, KeyOwner
from tokendesk.accounts.models import Role
from tokendesk.config import Settings, get_settings
from tokendesk.db import Database, get_database
from tokendesk.errors import AppError, InsufficientTokens
from tokendesk.events.bus import get_bus
from tokendesk.metering import demo_model
from tokendesk.metering.holds import HoldBatcher, Settlement, Settler, release
from tokendesk.metering.model_config import ModelConfig, load_models
from tokendesk.metering.service import UsageInput
from tokendesk.metering.tokens import prompt_tokens, text_tokens, weighted

router = APIRouter(prefix="/v1", tags=["gateway"])

DEMO_DELAY_SECONDS = 0.02

# Completion ids double as usage event ids, so they must never repeat: a random
# prefix per process and a counter are unique without a system call per call.
_ID_PREFIX = secrets.token_hex(12)
_ids = itertools.count()


class Gateway:
    """Per-process gateway state: models, the upstream connection pool, caches, the settler."""

    def __init__(self, settings: Settings, database: Database) -> None:
        self.settings = settings
        self.database = database
        self.models = load_models(settings)
        self.upstream_urls = {
            name: URL(model.base_url.rstrip("/") + "/chat/completions")
            for name, model in self.models.items()
            if not model.is_demo
        }
        self.keys = KeyCache(database, ttl_seconds=settings.key_cache_seconds)
        self.settler = Settler(database, keys_used=self.keys.used)
        self.holds = HoldBatcher(database, ttl_seconds=settings.reservation_ttl_seconds)
        self._client: aiohttp.ClientSession | None = None
        self._listener: asyncio.Task[None] | None = None

    def watch_credentials(self) -> None:
        """Start (once) forgetting cached keys whenever credentials change anywhere."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._forget_on_change())

    async def _forget_on_change(self) -> None:
        async with get_bus().subscribe(system=True) as queue:
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
                timeout=aiohttp.ClientTimeout(
                    total=None,
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
        await self.keys.stop()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._client is not None:
            await self._client.close()


def get_gateway(app: FastAPI) -> Gateway:
    gateway: Gateway | None = getattr(app.state, "gateway", None)
    if gateway is None or gateway.database is not get_database():
        settings: Settings = getattr(app.state, "settings", None) or get_settings()
        gateway = Gateway(settings, get_database())
        app.state.gateway = gateway
    gateway.watch_credentials()
    return gateway


def install(app: FastAPI, settings: Settings, database: Database) -> Gateway:
    app.state.gateway = Gateway(settings, database)
    return app.state.gateway


def openai_error(status: int, message: str, *, type_: str, code: str | None = None) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": type_, "param": None, "code": code}},
    )


class GatewayError(Exception):
    def __init__(self, response: JSONResponse) -> None:
        self.response = response


async def _caller(request: Request, gateway: Gateway) -> KeyOwner:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return await _session_caller(request, gateway)
    owner = await gateway.keys.owner_of_key(token)
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
    if request.method == "POST" and not csrf_ok(request, request.headers.get("x-csrf-token")):
        raise GatewayError(
            openai_error(403, "missing or invalid CSRF token", type_="permission_error")
        )
    return KeyOwner(actor.user_id, actor.home_organization_id, actor.role, actor.email)


@router.get("/models")
async def list_models(request: Request) -> Response:
    gateway = get_gateway(request.app)
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
    response = openai_error(400, f"{param}: {message}", type_="invalid_request_error")
    return GatewayError(response)


def _parse(body: Any, gateway: Gateway) -> tuple[ModelConfig, list[Any], int | None, bool]:
    if not isinstance(body, dict):
        raise _bad_request("the body must be a JSON object", "body")
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise _bad_request("required", "model")
    model = gateway.models.get(name)
    if model is None:
        raise GatewayError(
            openai_error(
                404,
                f"model {name!r} does not exist; see GET /v1/models",
                type_="invalid_request_error",
                code="model_not_found",
            )
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad_request("a non-empty list is required", "messages")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise _bad_request("must be a positive integer", "max_tokens")
    return model, messages, max_tokens, bool(body.get("stream"))


def _insufficient(exc: InsufficientTokens) -> JSONResponse:
    return openai_error(
        429,
        f"{exc.message}. Open the chat app and use 'Request more tokens', or POST "
        "/api/v1/token-requests with the amount you need.",
        type_="insufficient_quota",
        code="insufficient_quota",
    )


# Declared for the OpenAPI schema (and served here if the shortcut is not installed);
# :class:`Shortcut` answers these calls before routing.
@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    gateway = get_gateway(request.app)
    try:
        caller = await _caller(request, gateway)
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise _bad_request("invalid JSON", "body") from None
        model, messages, max_tokens, stream = _parse(body, gateway)
    except GatewayError as exc:
        return exc.response
    estimate_prompt = prompt_tokens(messages)
    budget = max_tokens or gateway.settings.gateway_default_max_tokens
    try:
        hold_id = await gateway.holds.hold(
            user_id=caller.user_id,
            organization_id=caller.organization_id,
            amount=weighted(estimate_prompt + budget, model.weight),
        )
    except InsufficientTokens as exc:
        return _insufficient(exc)
    except AppError as exc:
        return openai_error(exc.status_code, exc.message, type_="invalid_request_error")
    if caller.key_id is not None:
        gateway.keys.note_used(caller.key_id)
    call = _Call(gateway, caller, model, hold_id, estimate_prompt)
    if model.is_demo:
        return await call.demo(messages, max_tokens, stream)
    return await call.upstream(body, stream)


COMPLETIONS_PATH = "/v1/chat/completions"


class Shortcut:
    """Serves ``POST /v1/chat/completions`` before the framework's routing and middleware.

    The gateway is the product's hot path and needs none of what the routing
    stack does per request (matching against every page's route, dependency
    solving, exception middleware): at a thousand calls a second that machinery
    cost as much CPU as the call itself. Everything else passes straight through.
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


class _Call:
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
