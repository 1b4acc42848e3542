"""Bulk decisions on the Token Requests queue: confirm how many and how much, then decide.

The confirmation resolves the selection (ticked rows, or every pending request
matching the filters) into ids, so what the admin confirms is exactly what is
decided; the service then skips whatever someone else decided in between.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from tokendesk.accounts.actor import Actor
from tokendesk.bounds import parse_id
from tokendesk.deps import DbSession, ReadSession
from tokendesk.errors import AppError
from tokendesk.token_requests import bulk as bulk_service
from tokendesk.token_requests import service as token_requests
from tokendesk.web.admin.common import (
    PAGE_SIZE,
    AdminPageActor,
    AdminPageReader,
    AdminRoute,
    field_errors,
    with_events,
)
from tokendesk.web.admin.requests import QueueView, ViewQuery, current_request, parse_view
from tokendesk.web.pages import render

router = APIRouter(route_class=AdminRoute, include_in_schema=False)


@dataclass(frozen=True)
class Selection:
    ids: list[int]
    tokens: int | None  # None when only the ids are known (re-shown after an error)
    unavailable: int  # selected, but no longer pending (or out of reach)
    own: int  # the caller's own requests, which nobody may decide


def _parse_ids(raw: str) -> list[int]:
    """'3,1,3,x' -> [3, 1]: the form's comma-separated ids, in order, once each."""
    ids: dict[int, None] = {}
    for part in raw.split(","):
        number = parse_id(part)
        if number is not None:
            ids.setdefault(number, None)
    return list(ids)


async def _selected(session: DbSession, actor: Actor, ids: list[int]) -> Selection:
    """The explicitly ticked rows (one page at most), as they are now."""
    chosen: list[int] = []
    tokens = unavailable = own = 0
    for request_id in ids:
        item = await current_request(session, actor, request_id)
        if item is None or item.status.value != "pending":
            unavailable += 1
        elif item.user.id == actor.user_id:
            own += 1
        else:
            chosen.append(item.id)
            tokens += item.amount
    return Selection(chosen, tokens, unavailable, own)


async def _matching(session: DbSession, actor: Actor, view: QueueView) -> Selection:
    """Every pending request matching the filters, in the caller's scope."""
    found = await token_requests.matching_pending(
        session, actor=actor, team_id=view.team_id, q=view.q or None
    )
    return Selection(found.ids, found.tokens, 0, found.own)


@router.get("/admin/requests/bulk", response_class=HTMLResponse)
async def bulk_confirm(
    request: Request,
    session: ReadSession,
    actor: AdminPageReader,
    action: ViewQuery = None,
    ids: ViewQuery = None,
    matching: ViewQuery = None,
    q: ViewQuery = None,
    team_id: ViewQuery = None,
) -> HTMLResponse:
    """The confirmation: how many requests and how many tokens, before anything happens."""
    verb = action if action in ("approve", "reject") else "approve"
    view = parse_view("pending", q, team_id, None, None)
    if matching:
        selection = await _matching(session, actor, view)
    else:
        selection = await _selected(session, actor, _parse_ids(ids or "")[: PAGE_SIZE * 2])
    return render(
        request,
        "admin/requests/_bulk_confirm.html",
        action=verb,
        selection=selection,
        matching=bool(matching),
        view=view,
        note="",
        errors={},
    )


@router.post("/admin/requests/bulk", response_model=None)
async def bulk_decide(
    request: Request,
    session: DbSession,
    actor: AdminPageActor,
    action: Annotated[str, Form()] = "",
    ids: Annotated[str, Form()] = "",
    note: Annotated[str, Form()] = "",
) -> Response:
    request_ids = _parse_ids(ids)
    try:
        async with session.begin_nested():
            result = await bulk_service.bulk(
                session, actor=actor, action=action, ids=request_ids, note=note or None
            )
    except AppError as exc:
        # Only the note is a field on this form; anything else is about the selection.
        errors = field_errors(exc) if exc.field == "note" else {"": exc.message}
        return render(
            request,
            "admin/requests/_bulk_confirm.html",
            status_code=exc.status_code,
            action=action if action in ("approve", "reject") else "approve",
            selection=Selection(request_ids, None, 0, 0),
            matching=False,
            view=QueueView(),
            note=note,
            errors=errors,
        )
    reasons: dict[str, list[int]] = {}
    for skipped in result.skipped:
        reasons.setdefault(skipped.reason, []).append(skipped.id)
    response = render(
        request,
        "admin/requests/_bulk_summary.html",
        action=action,
        decided=len(result.decided),
        skipped=len(result.skipped),
        reasons=sorted(reasons.items(), key=lambda pair: -len(pair[1])),
    )
    verb = "Approved" if action == "approve" else "Rejected"
    return with_events(
        response,
        toast=(f"{verb} {len(result.decided):,} requests.", "ok"),
        refresh=True,
        clear_selection=True,
    )
