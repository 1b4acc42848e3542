"""``GET /events``: a Server-Sent Events stream of what the caller may see."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tokendesk.deps import CurrentReader, ReadSession, reauthenticate, runtime_of
from tokendesk.events.bus import ACCESS_CHANGED
from tokendesk.events.service import snapshot, visible_to

router = APIRouter(tags=["events"])

HEARTBEAT_SECONDS = 15.0
# How long a browser waits before it opens a stream again (after a drop or a refusal).
RECONNECT_SECONDS = 2


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
    runtime = runtime_of(request)
    streams = runtime.event_streams
    refusal = JSONResponse(
        status_code=429,
        content={
            "detail": f"too many open event streams: at most {streams.limit} per user; "
            "close another tokendesk tab and try again"
        },
        headers={"Retry-After": str(RECONNECT_SECONDS)},
    )
    # A stream that will be refused reads nothing; the place is taken as it is sent.
    if streams.open_for(actor.user_id) >= streams.limit:
        return refusal
    first = await snapshot(session, actor=actor)
    bus, ids = runtime.bus, runtime.event_ids

    async def stream() -> AsyncIterator[str]:
        admin_org = actor.organization_id if actor.is_admin else None
        async with bus.subscribe(user_id=actor.user_id, admin_organization_id=admin_org) as queue:
            yield f"retry: {RECONNECT_SECONDS * 1000}\n\n"
            yield _frame(next(ids), "snapshot", first)
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=HEARTBEAT_SECONDS)
                except TimeoutError:
                    yield ": ping\n\n"
                    continue
                if event.type == ACCESS_CHANGED:
                    # Only the caller's own access events reach this queue.
                    if await reauthenticate(request) != actor:
                        return
                    continue
                if visible_to(actor, event):
                    yield _frame(next(ids), event.type, event.data)

    response = StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    return streams.while_sent(response, actor.user_id, refusal=refusal)
