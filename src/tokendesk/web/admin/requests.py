"""Token Requests: the live queue, its fragments and one-request decisions (bulk: bulk.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from tokendesk.accounts import teams as teams_service
from tokendesk.accounts.actor import Actor
from tokendesk.accounts.lookups import get_organization
from tokendesk.deps import DbSession, ReadSession
from tokendesk.errors import AppError, Conflict, NotFound
from tokendesk.token_requests import decisions
from tokendesk.token_requests import service as token_requests
from tokendesk.token_requests.schemas import TokenRequestOut
from tokendesk.web.admin.common import (
    PAGE_SIZE,
    AdminPageActor,
    AdminPageReader,
    AdminRoute,
    RequestPathId,
    admin_render,
    field_errors,
    optional_int,
    parse_page,
    query_string,
    toast_response,
)
from tokendesk.web.admin.forms import signed_number
from tokendesk.web.pages import render

router = APIRouter(route_class=AdminRoute, include_in_schema=False)

TABS = (("pending", "Pending"), ("approved", "Approved"), ("rejected", "Rejected"), ("all", "All"))
SORTS = (
    ("created_at", "Oldest first"),
    ("-created_at", "Newest first"),
    ("-amount", "Largest amount"),
    ("amount", "Smallest amount"),
)


@dataclass(frozen=True)
class QueueView:
    """The queue as the admin is looking at it: tab, filters, sort and page."""

    status: str = "pending"
    q: str = ""
    team_id: int | None = None
    sort: str = "created_at"
    page: int = 1

    @classmethod
    def parse(
        cls,
        status: str | None,
        q: str | None,
        team_id: str | None,
        sort: str | None,
        page: str | None,
    ) -> QueueView:
        # Links are shared and bookmarked: an unknown value falls back instead of failing.
        tab = status if status in dict(TABS) else "pending"
        default_sort = cls.default_sort_for(tab)
        return cls(
            status=tab,
            q=(q or "").strip()[:200],
            team_id=optional_int(team_id),
            sort=sort if sort in dict(SORTS) else default_sort,
            page=parse_page(page),
        )

    @staticmethod
    def default_sort_for(tab: str) -> str:
        # The queue is worked oldest first; history reads newest first.
        return "created_at" if tab == "pending" else "-created_at"

    @property
    def service_status(self) -> str | None:
        return None if self.status == "all" else self.status

    def params(self, **changes: Any) -> dict[str, Any]:
        values: dict[str, Any] = {
            "status": self.status,
            "q": self.q,
            "team_id": self.team_id,
            "sort": self.sort,
            "page": self.page if self.page > 1 else None,
        }
        values.update(changes)
        if values["sort"] == self.default_sort_for(values["status"]):
            values["sort"] = None
        return values

    def url(self, path: str = "/admin/requests", **changes: Any) -> str:
        query = query_string(**self.params(**changes))
        return f"{path}?{query}" if query else path


ViewQuery = Annotated[str | None, Query()]


def parse_view(
    status: ViewQuery = None,
    q: ViewQuery = None,
    team_id: ViewQuery = None,
    sort: ViewQuery = None,
    page: ViewQuery = None,
) -> QueueView:
    """The queue view the query string asks for: the queue's pages take it as a dependency."""
    return QueueView.parse(status, q, team_id, sort, page)


ViewParams = Annotated[QueueView, Depends(parse_view)]


async def _queue_context(session: DbSession, actor: Actor, view: QueueView) -> dict[str, Any]:
    items, total = await token_requests.list_requests(
        session,
        actor=actor,
        status=view.service_status,
        team_id=view.team_id,
        q=view.q or None,
        sort=view.sort,
        limit=PAGE_SIZE,
        offset=(view.page - 1) * PAGE_SIZE,
    )
    counts = await token_requests.counts(session, actor=actor, team_id=view.team_id, q=view.q)
    pages = max(1, -(-total // PAGE_SIZE))
    return {
        "view": view,
        "items": items,
        "total": total,
        "counts": counts,
        "tabs": TABS,
        "sorts": SORTS,
        "pages": pages,
        "first_index": (view.page - 1) * PAGE_SIZE + 1 if items else 0,
        "last_index": (view.page - 1) * PAGE_SIZE + len(items),
        "pending_count": await token_requests.pending_count(session, actor=actor),
        "show_decided": view.status != "pending",
    }


@router.get("/admin", include_in_schema=False)
async def admin_home(actor: AdminPageReader) -> RedirectResponse:
    return RedirectResponse("/admin/requests", status_code=303)


@router.get("/admin/requests", response_class=HTMLResponse)
async def requests_page(
    request: Request, session: ReadSession, actor: AdminPageReader, view: ViewParams
) -> HTMLResponse:
    context = await _queue_context(session, actor, view)
    teams = await teams_service.list_teams(session, actor=actor)
    # Team owners filter among the teams they own; others would only ever be empty.
    teams = [row for row in teams if actor.can_manage_team(row.team.id)]
    return await admin_render(
        request,
        session,
        actor,
        "admin/requests/page.html",
        section="requests",
        page_title="Token Requests",
        teams=teams,
        **context,
    )


@router.get("/admin/requests/table", response_class=HTMLResponse)
async def requests_table(
    request: Request, session: ReadSession, actor: AdminPageReader, view: ViewParams
) -> HTMLResponse:
    """The queue fragment, with the tab counts and the badge swapped out of band."""
    context = await _queue_context(session, actor, view)
    org = await get_organization(session, actor.organization_id)
    response = render(request, "admin/requests/_table_response.html", tz=org.timezone, **context)
    # Keep the address bar in step with the filters, so a reload shows the same view. A live
    # refresh shows the same view: touching the URL (and htmx's history snapshot) then would
    # disturb a dialog the admin is filling in.
    if request.headers.get("x-live-refresh") != "1":
        response.headers["HX-Replace-Url"] = view.url()
    return response


@router.get("/admin/badge", response_class=HTMLResponse)
async def badge(request: Request, session: ReadSession, actor: AdminPageReader) -> HTMLResponse:
    count = await token_requests.pending_count(session, actor=actor)
    return render(request, "admin/requests/_badge.html", pending_count=count)


# ------------------------------------------------------------------ one request


async def _dialog(
    request: Request,
    session: DbSession,
    actor: Actor,
    *,
    action: str,
    request_id: int,
    status_code: int = 200,
    amount: str | None = None,
    note: str = "",
    errors: dict[str, str] | None = None,
) -> HTMLResponse:
    org = await get_organization(session, actor.organization_id)
    try:
        item: TokenRequestOut | None = await token_requests.get(
            session, actor=actor, request_id=request_id
        )
    except NotFound as exc:
        item, errors = None, {"": exc.message}
    errors = dict(errors or {})
    if item is not None and item.status.value != "pending" and "" not in errors:
        errors[""] = _already_decided(item)
    return render(
        request,
        "admin/requests/_decide_dialog.html",
        status_code=status_code,
        action=action,
        request_id=request_id,
        item=item,
        amount=amount if amount is not None else (str(item.amount) if item else ""),
        note=note,
        errors=errors,
        own=item is not None and item.user.id == actor.user_id,
        tz=org.timezone,
    )


def _already_decided(item: TokenRequestOut) -> str:
    who = f" by {item.decided_by.name}" if item.decided_by else ""
    return f"This request was already {item.status.value}{who}."


def _conflict_message(exc: AppError, item: TokenRequestOut | None) -> str:
    """The service's 409 says what state the request is in; add who decided it."""
    message = exc.message[:1].upper() + exc.message[1:]
    if item is None or item.decided_by is None or item.decided_by.name in message:
        return message
    return f"{message.rstrip('.')} by {item.decided_by.name}."


@router.get("/admin/requests/{request_id}/{action}", response_class=HTMLResponse)
async def decide_dialog(
    request: Request,
    session: ReadSession,
    actor: AdminPageReader,
    request_id: RequestPathId,
    action: str,
) -> HTMLResponse:
    if action not in ("approve", "reject"):
        raise NotFound(f"no such action {action!r}")
    return await _dialog(request, session, actor, action=action, request_id=request_id)


def _parse_amount(raw: str | None) -> int | None:
    """Blank means the requested amount; thousands separators are tolerated."""
    text = (raw or "").strip()
    if not text:
        return None
    number = signed_number(text)
    if number is None:
        raise ValueError(text)
    return number


@router.post("/admin/requests/{request_id}/approve", response_model=None)
async def approve(
    request: Request,
    session: DbSession,
    actor: AdminPageActor,
    request_id: RequestPathId,
    amount: Annotated[str, Form()] = "",
    note: Annotated[str, Form()] = "",
) -> Response:
    return await _decide(
        request, session, actor, action="approve", request_id=request_id, raw=amount, note=note
    )


@router.post("/admin/requests/{request_id}/reject", response_model=None)
async def reject(
    request: Request,
    session: DbSession,
    actor: AdminPageActor,
    request_id: RequestPathId,
    note: Annotated[str, Form()] = "",
) -> Response:
    return await _decide(
        request, session, actor, action="reject", request_id=request_id, raw=None, note=note
    )


async def _decide(
    request: Request,
    session: DbSession,
    actor: Actor,
    *,
    action: str,
    request_id: int,
    raw: str | None,
    note: str,
) -> Response:
    def again(errors: dict[str, str], status_code: int) -> Any:
        return _dialog(
            request,
            session,
            actor,
            action=action,
            request_id=request_id,
            status_code=status_code,
            amount=raw,
            note=note,
            errors=errors,
        )

    try:
        amount = _parse_amount(raw)
    except ValueError:
        return await again({"amount": "must be a whole number of tokens"}, 422)
    try:
        # A nested transaction, so a refused decision leaves the page's session usable.
        async with session.begin_nested():
            if action == "approve":
                out = await decisions.approve(
                    session, actor=actor, request_id=request_id, amount=amount, note=note or None
                )
            else:
                out = await decisions.reject(
                    session, actor=actor, request_id=request_id, note=note or None
                )
    except Conflict as exc:
        item = await current_request(session, actor, request_id)
        return await again({"": _conflict_message(exc, item)}, 409)
    except AppError as exc:
        return await again(field_errors(exc), exc.status_code)
    if action == "approve":
        message = f"Approved {out.approved_amount or out.amount:,} tokens for {out.user.name}."
    else:
        message = f"Rejected the request from {out.user.name}."
    return toast_response(message, refresh=True, close_dialog=True)


async def current_request(
    session: DbSession, actor: Actor, request_id: int
) -> TokenRequestOut | None:
    try:
        return await token_requests.get(session, actor=actor, request_id=request_id)
    except AppError:
        return None
