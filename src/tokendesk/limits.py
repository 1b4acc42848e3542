"""How many of a thing (gateway calls, event streams) one user may have open at once.

Counted per process: each instance bounds what it serves, which is what such a
limit protects (its memory, its connections, its share of the upstream), and no
shared counter can be left behind by an instance that died.
"""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class PerUserLimit:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[int, int] = {}
        # How many are open for everyone together (for the metrics).
        self.in_use = 0

    def open_for(self, user_id: int) -> int:
        return self._open.get(user_id, 0)

    def take(self, user_id: int) -> bool:
        """One more for ``user_id``, unless they already have the most allowed."""
        count = self._open.get(user_id, 0)
        if count >= self.limit:
            return False
        self._open[user_id] = count + 1
        self.in_use += 1
        return True

    def give_back(self, user_id: int) -> None:
        count = self._open.pop(user_id, 0)
        if count > 0:
            self.in_use -= 1
        if count > 1:
            self._open[user_id] = count - 1

    def until_sent(self, response: Response, user_id: int) -> Response:
        """``response``, giving back what ``user_id`` took once it has been sent (or
        the client has gone)."""
        return _Held(self, user_id, response, refusal=None)

    def while_sent(self, response: Response, user_id: int, *, refusal: Response) -> Response:
        """``response``, taken for ``user_id`` while it is sent, or ``refusal`` if they
        have the most allowed already.

        Taken as sending begins, not before: a response that is never sent (its
        request failed after the endpoint returned) holds nothing.
        """
        return _Held(self, user_id, response, refusal=refusal)


class _Held(Response):
    """Sends another response with the user's place taken (before, or as it starts)."""

    def __init__(
        self,
        limit: PerUserLimit,
        user_id: int,
        response: Response,
        *,
        refusal: Response | None,
    ) -> None:
        # Not Response.__init__: this only forwards, but the framework reads these.
        self.limit = limit
        self.user_id = user_id
        self.response = response
        self.refusal = refusal
        self.status_code = response.status_code
        self.raw_headers = response.raw_headers
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.refusal is not None and not self.limit.take(self.user_id):
            await self.refusal(scope, receive, send)
            return
        try:
            await self.response(scope, receive, send)
        finally:
            self.limit.give_back(self.user_id)
        if self.background is not None:
            await self.background()
