"""A request that fails because the database cannot be reached answers 503 with a
``Retry-After`` hint, in one place for every route, the gateway's shortcut and the
event streams' openings alike.

What counts as an outage is :func:`tokendesk.db.outage.is_outage`; anything else
stays the error it is. Once a response has started (a streamed reply) there is
nothing left to answer with: the connection is closed, as for any failure then.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokendesk.db.outage import MESSAGE, RETRY_AFTER_SECONDS, is_outage

log = logging.getLogger(__name__)

# At most one warning this often while the database is down: every request fails then.
LOG_EVERY_SECONDS = 10.0
# A path's own 503 (path, message), or None for the default: the gateway's APIs
# answer in their own error shapes.
Shape = Callable[[str, str], Response | None]


def _default(scope: Scope) -> Response:
    accept = b""
    for name, value in scope.get("headers", []):
        if name == b"accept":
            accept = value
            break
    if b"text/html" in accept:
        return PlainTextResponse(
            "tokendesk cannot reach its database right now. Try again in a few seconds.",
            status_code=503,
        )
    return JSONResponse({"detail": MESSAGE}, status_code=503)


class DatabaseUnavailable:
    """ASGI middleware: an outage before the response starts becomes a 503."""

    def __init__(self, app: ASGIApp, *, shape: Shape | None = None) -> None:
        self.app = app
        self.shape = shape
        self._logged_at = -LOG_EVERY_SECONDS
        self._unlogged = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as error:
            if started or not is_outage(error):
                raise
            self._note(error)
            shaped = self.shape(scope["path"], MESSAGE) if self.shape is not None else None
            response = shaped or _default(scope)
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            await response(scope, receive, send)

    def _note(self, error: Exception) -> None:
        now = time.monotonic()
        if now - self._logged_at < LOG_EVERY_SECONDS:
            self._unlogged += 1
            return
        log.warning(
            "database unavailable, answering 503 (%s: %s; %d more since the last warning)",
            type(error).__name__,
            error,
            self._unlogged,
        )
        self._logged_at, self._unlogged = now, 0
