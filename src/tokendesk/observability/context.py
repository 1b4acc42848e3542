"""The request being served: its id, arrival and caller, for its log line, every other
line logged while it runs, and the gateway's timings."""

from __future__ import annotations

import contextvars
import time

from starlette.types import Scope

# Where the request's RequestInfo sits in its ASGI scope.
SCOPE_KEY = "tokendesk.request"


class RequestInfo:
    """One request's id, arrival and what the log line says of it."""

    __slots__ = ("key_id", "request_id", "route", "started", "user_id")

    def __init__(self, request_id: str, started: float) -> None:
        self.request_id = request_id
        self.started = started
        self.route: str | None = None
        self.user_id: int | None = None
        self.key_id: int | None = None


# The request being served, for log lines written while it runs and for the gateway's
# timings; a context variable, so each request's task sees its own.
CURRENT: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar(
    "tokendesk_request", default=None
)


def since_arrival() -> float:
    """Seconds since the current request arrived (0 outside a request)."""
    info = CURRENT.get()
    return 0.0 if info is None else time.perf_counter() - info.started


def current_request_id() -> str | None:
    info = CURRENT.get()
    return None if info is None else info.request_id


def note_caller(scope: Scope, *, user_id: int, key_id: int | None = None) -> None:
    """Name the request's caller in its log line (ids only)."""
    info: RequestInfo | None = scope.get(SCOPE_KEY)
    if info is not None:
        info.user_id = user_id
        info.key_id = key_id


def note_route(scope: Scope, route: str) -> None:
    """The route template of a request served before the framework's routing."""
    info: RequestInfo | None = scope.get(SCOPE_KEY)
    if info is not None:
        info.route = route
