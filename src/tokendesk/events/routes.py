"""``GET /events``: a Server-Sent Events stream of what the caller may see."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from tokendesk.deps import CurrentActor, DbSession, reauthenticate
from tokendesk.events.bus import ACCESS_CHANGED, get_bus
from tokendesk.events.service import snapshot, visible_to

router = APIRouter(tags=["events"])

HEARTBEAT_SECONDS = 15.0
_ids = itertools.count(1)


def _frame(event_type: str, data: object) -> str:
    payload = json.dumps(data, separators=(",", ":"), default=str)
    return f"id: {next(_ids)}\nevent: {event_type}\ndata: {payload}\n\n"


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def events(request: Request, actor: CurrentActor, session: DbSession) -> StreamingResponse:
    """Stream balance, request and queue events; a fresh ``snapshot`` opens every connection.

    The database session is only used for the snapshot: it closes before streaming starts.
    When the caller's access changes (deactivated, another role or team, a team
    owned or no longer owned, a revoked key), the stream checks its credentials
    again and ends unless they still mean the same caller: the client reconnects
    with what it may see now, or is refused.
    """
    first = await snapshot(session, actor=actor)
    bus = get_bus()

    async def stream() -> AsyncIterator[str]:
        admin_org = actor.organization_id if actor.is_admin else None
        async with bus.subscribe(user_id=actor.user_id, admin_organization_id=admin_org) as queue:
            yield "retry: 2000\n\n"
            yield _frame("snapshot", first)
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=HEARTBEAT_SECONDS)
                except TimeoutError:
                    yield ": ping\n\n"
                    continue
                if event.type == ACCESS_CHANGED:
                    if event.user_id == actor.user_id and await reauthenticate(request) != actor:
                        return
                    continue
                if visible_to(actor, event):
                    yield _frame(event.type, event.data)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
