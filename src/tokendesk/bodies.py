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
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokendesk.config import Settings
from tokendesk.gateway.dialects import ErrorShape, anthropic_error, openai_error

GATEWAY_PREFIX = "/v1/"
# Where the gateway speaks Anthropic's API, whose clients read its error shape.
ANTHROPIC_PREFIX = "/v1/messages"
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


class _Deadlines:
    """Cuts off body reads that run past the timeout.

    One timer per slice of time for all the reads that began in it: a timer of
    their own (``asyncio.timeout``) cost each request more than reading a small
    body does. A read is cut off between the timeout and one slice after it.
    """

    SLICE_SECONDS = 0.25

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._slices: dict[int, set[asyncio.Task[Any]]] = {}
        self._expired: set[asyncio.Task[Any]] = set()

    def watch(self, task: asyncio.Task[Any]) -> set[asyncio.Task[Any]]:
        """Watch ``task``; it leaves the set returned once its read is over."""
        loop = asyncio.get_running_loop()
        key = int(loop.time() / self.SLICE_SECONDS) + 1
        watched = self._slices.get(key)
        if watched is None:
            watched = self._slices[key] = set()
            loop.call_at(key * self.SLICE_SECONDS + self.timeout, self._expire, key)
        watched.add(task)
        return watched

    def _expire(self, key: int) -> None:
        for task in self._slices.pop(key, ()):
            self._expired.add(task)
            task.cancel()

    def expired(self, task: asyncio.Task[Any]) -> bool:
        """Whether a cancellation of ``task`` was this timeout's (and only that)."""
        if task not in self._expired:
            return False
        self._expired.discard(task)
        return task.uncancel() == 0


class WholeBodies:
    """Reads each request's body before the app sees it, then replays it.

    Too large (by its Content-Length, or as it arrives) answers 413, too slow
    408, both with a message and ``Connection: close``; the gateway's in the
    error shape its clients read (OpenAI's, or Anthropic's on its Messages API).
    Installed outermost, around the gateway's shortcut too.
    """

    def __init__(self, app: ASGIApp, *, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits
        self.deadlines = _Deadlines(limits.timeout_seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared, chunked = _framing(scope)
        if not chunked and not declared:
            await self.app(scope, receive, send)
            return
        shape, limit = self._limit_for(scope)
        try:
            if declared is not None and declared > limit:
                raise _TooLarge()
            body = await self._read_in_time(receive, limit)
        except _TooLarge:
            refusal = _refusal(
                413,
                f"the request body is larger than the {_size(limit)} this endpoint accepts",
                code="request_too_large",
                shape=shape,
            )
        except TimeoutError:
            refusal = _refusal(
                408,
                f"the request body did not arrive within {self.limits.timeout_seconds:g} seconds",
                code="request_timeout",
                shape=shape,
            )
        except _ClientGone:
            return
        else:
            await self.app(scope, _replay(body, receive), send)
            return
        await refusal(scope, receive, send)

    async def _read_in_time(self, receive: Receive, limit: int) -> bytes:
        task = asyncio.current_task()
        assert task is not None
        watched = self.deadlines.watch(task)
        try:
            return await _read(receive, limit)
        except asyncio.CancelledError:
            if self.deadlines.expired(task):
                raise TimeoutError() from None
            raise
        finally:
            watched.discard(task)

    def _limit_for(self, scope: Scope) -> tuple[ErrorShape | None, int]:
        """(the gateway's error shape, None elsewhere; the body limit) for the route
        ``scope`` is headed to."""
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if path.startswith(ANTHROPIC_PREFIX):
            return anthropic_error, self.limits.gateway
        if path.startswith(GATEWAY_PREFIX):
            return openai_error, self.limits.gateway
        if path.startswith(API_PREFIX):
            return None, self.limits.api
        return None, self.limits.forms


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


def _refusal(status: int, message: str, *, code: str, shape: ErrorShape | None) -> JSONResponse:
    if shape is not None:
        response = shape(status, message, type_="invalid_request_error", code=code)
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
