"""The error shapes and credentials of the APIs the gateway speaks.

A client reads refusals in its own API's shape: OpenAI's clients an ``error`` object
with ``type``, ``param`` and ``code``, Anthropic's ``{"type": "error", "error": {...}}``
whose ``type`` follows the status. Each endpoint names its :class:`Dialect`; the
refusals themselves (who is calling, a bad body, too few tokens) are decided once,
for every API alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fastapi import Request
from fastapi.responses import JSONResponse

from tokendesk.accounts.auth import bearer_key
from tokendesk.errors import AppError


class ErrorShape(Protocol):
    def __call__(
        self,
        status: int,
        message: str,
        *,
        type_: str,
        code: str | None = None,
        param: str | None = None,
    ) -> JSONResponse: ...


def openai_error(
    status: int,
    message: str,
    *,
    type_: str,
    code: str | None = None,
    param: str | None = None,
) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": type_, "param": param, "code": code}},
    )


def app_error(error: ErrorShape, exc: AppError) -> JSONResponse:
    """A domain error in the endpoint's shape: the caller's fault below 500, else the
    server's (the database refusing writes), with the wait it asks for."""
    type_ = "server_error" if exc.status_code >= 500 else "invalid_request_error"
    response = error(exc.status_code, exc.message, type_=type_)
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(math.ceil(exc.retry_after))
    return response


# Anthropic's error types by status; another 4xx is an invalid request, another 5xx an
# api_error (what its SDKs raise as an InternalServerError).
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def anthropic_type(status: int) -> str:
    return ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def anthropic_error(
    status: int,
    message: str,
    *,
    type_: str = "",
    code: str | None = None,
    param: str | None = None,
) -> JSONResponse:
    """An error as Anthropic's API sends it. Its type follows from the status (OpenAI's
    ``type_`` and ``code`` have no place in it); the message names any field already."""
    return JSONResponse(
        status_code=status,
        content={"type": "error", "error": {"type": anthropic_type(status), "message": message}},
    )


def anthropic_key(request: Request) -> str | None:
    """The key of an ``x-api-key`` header (what Anthropic's clients send with an API
    key), else of ``Authorization: Bearer`` (with an auth token, or an apiKeyHelper)."""
    key = request.headers.get("x-api-key", "").strip()
    return key or bearer_key(request)


@dataclass(frozen=True)
class Dialect:
    """How an endpoint's clients read refusals and send their key."""

    error: ErrorShape
    key: Callable[[Request], str | None]


OPENAI = Dialect(error=openai_error, key=bearer_key)
ANTHROPIC = Dialect(error=anthropic_error, key=anthropic_key)


def outage_reply(path: str, message: str) -> JSONResponse | None:
    """The 503 a gateway path answers while the database is unreachable, in its API's
    shape (Anthropic's ``overloaded_error``, OpenAI's ``server_error``); None off the
    gateway. Both APIs' clients retry a 503 after its ``Retry-After``."""
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return anthropic_error(503, message)
    if path.startswith("/v1/"):
        return openai_error(503, message, type_="server_error", code="database_unavailable")
    return None
