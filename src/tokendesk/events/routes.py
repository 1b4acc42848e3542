"""``GET /events``: a Server-Sent Events stream of what the caller may see."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tokendesk.accounts.actor import Actor
from tokendesk.deps import CurrentReader, ReadSession, reauthenticate, runtime_of
from tokendesk.events.bus import ACCESS_CHANGED, RESYNC, Event, Inbox
from tokendesk.events.service import snapshot, visible_to
from tokendesk.events.stream import (
    END,
    RECONNECT_SECONDS,
    EventStream,
    SnapshotOf,
    handed_off,
)

router = APIRouter(tags=["events"])


def _frame(event_id: int, event_type: str, data: object) -> str:
    payload = json.dumps(data, separators=(",", ":"), default=str)
    return f"id: {event_id}\nevent: {event_type}\ndata: {payload}\n\n"


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def events(request: Request, actor: CurrentReader, session: ReadSession) -> Response:
    """Stream balance, request and queue events; a fresh ``snapshot`` opens every connection.

    The database session is only used for the snapshot: it closes before streaming starts.
    When the caller's access changes (deactivated, another role or team, a team
    owned or no longer owned, a revoked key), the stream checks its credentials
    again and ends unless they still mean the same caller: the client reconnects
    with what it may see now, or is refused.
    A member may have ``TOKENDESK_EVENT_STREAMS_PER_USER`` streams open at once; one
    more answers 429.
    """
    refusal = too_many_streams(request, actor.user_id)
    if refusal is not None:
        return refusal
    snapshot_of = functools.partial(snapshot, actor=actor)
    first = await snapshot_of(session)
    # The scope, not the request: an open stream keeps what this holds for hours,
    # and the request's parsed headers, query and cookies would be kept with it.
    scope = request.scope

    async def same_caller() -> bool:
        return await reauthenticate(Request(scope)) == actor

    return live_stream(
        request, actor=actor, first=first, snapshot_of=snapshot_of, still_allowed=same_caller
    )


@functools.cache
def _stream_refusal(limit: int) -> JSONResponse:
    # One per limit, shared: every open stream holds the refusal it would have been.
    return JSONResponse(
        status_code=429,
        content={
            "detail": f"too many open event streams: at most {limit} per user; "
            "close another tokendesk tab and try again"
        },
        headers={"Retry-After": str(RECONNECT_SECONDS)},
    )


def too_many_streams(request: Request, user_id: int) -> JSONResponse | None:
    """The 429 a stream gets when ``user_id`` has the most open already, so a stream
    that will be refused reads nothing; None when there is room."""
    streams = runtime_of(request).event_streams
    if streams.open_for(user_id) >= streams.limit:
        return _stream_refusal(streams.limit)
    return None


def live_stream(
    request: Request,
    *,
    actor: Actor,
    first: dict[str, Any],
    snapshot_of: SnapshotOf,
    still_allowed: Callable[[], Awaitable[bool]],
    ends_at: datetime | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """The SSE response of ``actor``'s events, opening with the ``first`` snapshot.

    On a change of the actor's access it asks ``still_allowed`` and ends unless the
    answer is yes; it also ends at ``ends_at`` (a credential's expiry), after which
    the client's reconnection is refused, and when the process ends every stream
    (``runtime.live_streams.end_all()``). When the bus says events may have been
    missed (it lost the database and is back) it sends a fresh ``snapshot``, read
    with ``snapshot_of`` in a read transaction of its own. The actor's place among
    their open streams is taken as it is sent.
    """
    runtime = runtime_of(request)
    streams = runtime.event_streams
    bus, ids = runtime.bus, runtime.event_ids
    admin_org = actor.organization_id if actor.is_admin else None
    database, live = runtime.database, runtime.live_streams

    def subscribe() -> contextlib.AbstractAsyncContextManager[Inbox]:
        return bus.subscribe(user_id=actor.user_id, admin_organization_id=admin_org)

    async def render(event: Event) -> str | object | None:
        if event.type == ACCESS_CHANGED:
            # Only the caller's own access events reach this inbox.
            return None if await still_allowed() else END
        if event.type == RESYNC:
            fresh = await live.refreshed(database, snapshot_of)
            return None if fresh is None else _frame(next(ids), "snapshot", fresh)
        if visible_to(actor, event):
            return _frame(next(ids), event.type, event.data)
        return None

    response = EventStream(
        subscribe=subscribe,
        # The snapshot's id is taken as the response is built, before any event's.
        opening=[f"retry: {RECONNECT_SECONDS * 1000}\n\n", _frame(next(ids), "snapshot", first)],
        renderer=render,
        streams=runtime.live_streams,
        ends_at=ends_at,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
    )
    held = streams.while_sent(response, actor.user_id, refusal=_stream_refusal(streams.limit))
    return handed_off(request.scope, held)


def is_stream(path: str) -> bool:
    """Whether a GET of ``path`` opens an event stream (``/events``, ``/ask/{token}/events``)."""
    return path == "/events" or (path.startswith("/ask/") and path.endswith("/events"))
