"""Request bodies are received whole, bounded in size and in time, before the app runs.

A dependency that opens a transaction (and on SQLite takes the process's write
lock) must never then wait for the client: a body that never arrives would hold
every other writer back, or on PostgreSQL hold a transaction and a pooled
connection. So every body is read here first, up to a size limit per kind of
route and within a time limit, and handed to the app from memory.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokendesk.config import Settings
from tokendesk.metering.completion import openai_error

GATEWAY_PREFIX = "/v1/"
API_PREFIX = "/api/"


@dataclass(frozen=True)
class BodyLimits:
    api: int
    gateway: int
    forms: int
    timeout_seconds: float

    @classmethod
    def of(cls, settings: Settings) -> BodyLimits:
        return cls(
            api=settings.api_body_max_bytes,
            gateway=settings.gateway_body_max_bytes,
            forms=settings.form_body_max_bytes,
            timeout_seconds=settings.body_timeout_seconds,
        )


class _TooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class WholeBodies:
    """Reads each request's body before the app sees it, then replays it.

    Too large (by its Content-Length, or as it arrives) answers 413, too slow
    408, both with a message and ``Connection: close``; the gateway's in the
    OpenAI error shape its clients read. Installed outermost, around the
    gateway's shortcut too.
    """

    def __init__(self, app: ASGIApp, *, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared, chunked = _framing(scope)
        if not chunked and not declared:
            await self.app(scope, receive, send)
            return
        gateway, limit = self._limit_for(scope)
        try:
            if declared is not None and declared > limit:
                raise _TooLarge()
            async with asyncio.timeout(self.limits.timeout_seconds):
                body = await _read(receive, limit)
        except _TooLarge:
            refusal = _refusal(
                413,
                f"the request body is larger than the {_size(limit)} this endpoint accepts",
                code="request_too_large",
                gateway=gateway,
            )
        except TimeoutError:
            refusal = _refusal(
                408,
                f"the request body did not arrive within {self.limits.timeout_seconds:g} seconds",
                code="request_timeout",
                gateway=gateway,
            )
        except _ClientGone:
            return
        else:
            await self.app(scope, _replay(body, receive), send)
            return
        await refusal(scope, receive, send)

    def _limit_for(self, scope: Scope) -> tuple[bool, int]:
        """(is it the gateway, the body limit) for the route ``scope`` is headed to."""
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if path.startswith(GATEWAY_PREFIX):
            return True, self.limits.gateway
        if path.startswith(API_PREFIX):
            return False, self.limits.api
        return False, self.limits.forms


def _framing(scope: Scope) -> tuple[int | None, bool]:
    """The declared Content-Length (None if absent) and whether the body is chunked."""
    declared: int | None = None
    chunked = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            # The server has already refused a malformed length.
            declared = int(value)
        elif name == b"transfer-encoding":
            chunked = True
    return declared, chunked


async def _read(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body in one message; after it, the client's own messages (its disconnect)."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _refusal(status: int, message: str, *, code: str, gateway: bool) -> JSONResponse:
    if gateway:
        response = openai_error(status, message, type_="invalid_request_error", code=code)
    else:
        response = JSONResponse(status_code=status, content={"detail": message})
    # What is left of the body is not read: the connection cannot carry another request.
    response.headers["connection"] = "close"
    return response


def _size(limit: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if limit >= scale and limit % scale == 0:
            return f"{limit // scale:,} {unit}"
    return f"{limit:,} bytes"
