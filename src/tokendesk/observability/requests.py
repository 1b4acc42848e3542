"""Every request's id, its one log line, and its count in the HTTP metrics.

:class:`RequestLog` is the application's outermost layer, so it sees every
request, the gateway's shortcut included. The id is the client's ``X-Request-ID``
when that is a plain token (letters, digits and ``-._:``, at most 128), else one
made here; either way the response carries it back and every log line written
while the request runs names it. The line names the route's template, never the
path (a personal request link's token stays out of the logs), the caller's user
and key ids once known, and never anything of the body.

It is built to cost little (benchmarks/RESULTS.md): the id is a process prefix
and a counter, and the line is written only when the request logger is enabled at
INFO, straight to the stream of tokendesk's own handler when that is where it goes
(:meth:`logs.LineHandler.write_request`), through a log record otherwise.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokendesk.observability.context import CURRENT, SCOPE_KEY, RequestInfo
from tokendesk.observability.logs import REQUEST_LOGGER, direct_handler

if TYPE_CHECKING:
    from tokendesk.runtime import Runtime

HEADER = b"x-request-id"
MAX_ID_LENGTH = 128
_PLAIN_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,%d}" % MAX_ID_LENGTH)
UNMATCHED = "<unmatched>"

log = logging.getLogger(REQUEST_LOGGER)


def route_template(scope: Scope) -> str:
    """The template of the route that served ``scope`` (``/api/v1/users/{user_id}``)."""
    info: RequestInfo | None = scope.get(SCOPE_KEY)
    if info is not None and info.route is not None:
        return info.route
    # A route of an included router keeps its own path, without the prefixes it was
    # included under; FastAPI notes the whole one beside it in the scope (not a public
    # interface: tests/observability check it, and the route's own path is the fallback).
    fastapi_scope = scope.get("fastapi")
    context = (
        fastapi_scope.get("effective_route_context") if isinstance(fastapi_scope, dict) else None
    )
    whole = getattr(context, "path_format", None)
    if isinstance(whole, str):
        return whole
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED
    if not hasattr(route, "endpoint"):  # a mount (static files): the rest is one parameter
        return f"{path}/{{path}}"
    return path


class RequestLog:
    """Gives each HTTP request an id, logs one line for it and counts it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.prefix = secrets.token_hex(6)
        self.ids = itertools.count(1)

    def _request_id(self, scope: Scope) -> str:
        for name, value in scope["headers"]:
            if name == HEADER:
                if _PLAIN_ID.fullmatch(value):
                    return value.decode()
                break
        return f"{self.prefix}-{next(self.ids):x}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        info = RequestInfo(self._request_id(scope), started)
        scope[SCOPE_KEY] = info
        header = (HEADER, info.request_id.encode())
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = CURRENT.set(info)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            CURRENT.reset(token)
            seconds = time.perf_counter() - started
            route = route_template(scope)
            method: str = scope["method"]
            app = scope.get("app")
            runtime: Runtime | None = getattr(getattr(app, "state", None), "runtime", None)
            if runtime is not None:
                runtime.metrics.request(route, method, status, seconds)
            if log.isEnabledFor(logging.INFO):
                _log_request(info, scope, route, method, status, seconds)


def _log_request(
    info: RequestInfo, scope: Scope, route: str, method: str, status: int, seconds: float
) -> None:
    if info.user_id is None:
        state: Any = scope.get("state")
        actor = state.get("actor") if isinstance(state, dict) else None
        user_id = getattr(actor, "user_id", None)
        if isinstance(user_id, int):
            info.user_id = user_id
    duration_ms = round(seconds * 1000, 2)
    handler = direct_handler(log)
    if handler is not None:
        handler.write_request(info, method, route, status, duration_ms)
        return
    user = "-" if info.user_id is None else info.user_id
    key = "-" if info.key_id is None else info.key_id
    # Made directly, not through log.info: the logger would look up the calling frame.
    record = logging.LogRecord(
        REQUEST_LOGGER,
        logging.INFO,
        "",
        0,
        "%s %s %d %.2fms user=%s key=%s",
        (method, route, status, duration_ms, user, key),
        None,
    )
    record.request_id = info.request_id
    record.http = {
        "method": method,
        "route": route,
        "status": status,
        "duration_ms": duration_ms,
        "user_id": info.user_id,
        "key_id": info.key_id,
    }
    log.handle(record)
