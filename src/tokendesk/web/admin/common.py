"""What every admin page shares: who may open it, the sidebar, CSRF and form errors.

The admin center is one sub-application whose every route needs an admin role.
Rules (scope, transitions, limits) live in the services; this layer only turns
HTTP into service calls and service answers into HTML.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.actor import Actor
from tokendesk.accounts.auth import csrf_refused
from tokendesk.accounts.lookups import get_organization
from tokendesk.bounds import MAX_OFFSET, parse_count, path_id
from tokendesk.deps import DbSession, ReadSession, database_of
from tokendesk.errors import AppError
from tokendesk.web.pages import page_actor, render

PAGE_SIZE = 50

# Path ids the admin pages take: one no row can have shows the page's "not found".
UserPathId = Annotated[int, path_id("user")]
TeamPathId = Annotated[int, path_id("team")]
RequestPathId = Annotated[int, path_id("token request")]


class NotAnAdmin(Exception):
    """A signed-in member opened the admin center."""


class BadCsrf(Exception):
    """A state-changing admin request came without the session's CSRF token."""


class AdminRoute(APIRoute):
    """Renders the admin center's refusals as pages (or fragments for htmx) instead of JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except NotAnAdmin:
                return render(
                    request,
                    "admin/forbidden.html",
                    status_code=403,
                    message="The admin center is for team owners and administrators.",
                )
            except BadCsrf:
                if request.headers.get("hx-request"):
                    return toast_response(
                        "Your session changed in another tab. Reload the page and try again.",
                        kind="error",
                        status_code=403,
                    )
                return render(
                    request,
                    "admin/forbidden.html",
                    status_code=403,
                    message="The form was stale (missing or invalid CSRF token). "
                    "Go back, reload the page and try again.",
                )
            except AppError as exc:
                # What a handler did not turn into a form error: a missing object or a refusal.
                if request.headers.get("hx-request"):
                    return toast_response(exc.message, kind="error", status_code=exc.status_code)
                return render(
                    request,
                    "admin/forbidden.html",
                    status_code=exc.status_code,
                    message=exc.message,
                    heading="Not found" if exc.status_code == 404 else "Not allowed",
                )

        return guarded


async def submitted_csrf(request: Request) -> str | None:
    """The CSRF token a state change carries; every admin route reads it first (see
    routes.py), so a form is never read with a transaction open."""
    header = request.headers.get("x-csrf-token")
    if header:
        return header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        value = (await request.form()).get("csrf_token")
        return value if isinstance(value, str) else None
    return None


def _admitted(request: Request, csrf: str | None, actor: Actor) -> Actor:
    if not actor.is_admin:
        raise NotAnAdmin()
    # Cookies ride along automatically, so every state change must prove intent.
    if csrf_refused(request, csrf):
        raise BadCsrf()
    return actor


async def _admin_actor(
    request: Request,
    csrf: Annotated[str | None, Depends(submitted_csrf)],
    session: DbSession,
) -> Actor:
    return _admitted(request, csrf, await page_actor(request, session))


async def _admin_reader(
    request: Request,
    csrf: Annotated[str | None, Depends(submitted_csrf)],
    session: ReadSession,
) -> Actor:
    return _admitted(request, csrf, await page_actor(request, session))


async def _admin_actor_reading(
    request: Request, csrf: Annotated[str | None, Depends(submitted_csrf)]
) -> Actor:
    async with database_of(request).transaction(write=False) as session:
        actor = await page_actor(request, session)
    return _admitted(request, csrf, actor)


AdminPageActor = Annotated[Actor, Depends(_admin_actor)]
# For GET pages and form renders: the admin, found in the page's read transaction.
AdminPageReader = Annotated[Actor, Depends(_admin_reader)]
# For a route that opens its write transaction itself, after slow work (a password hash).
AdminReadingActor = Annotated[Actor, Depends(_admin_actor_reading)]


def field_errors(exc: AppError | ValidationError) -> dict[str, str]:
    """Map an error to {field: message} so each message shows next to its control.

    Errors without a field land under ``""`` (shown at the top of the form).
    """
    if isinstance(exc, ValidationError):
        errors: dict[str, str] = {}
        for err in exc.errors():
            loc = [str(part) for part in err.get("loc", ())]
            field = loc[0] if loc else ""
            message = "unknown field" if err.get("type") == "extra_forbidden" else err["msg"]
            errors.setdefault(field, _strip_value_error(str(message)))
        return errors
    field = exc.field or ""
    message = exc.message
    if field and message.startswith(f"{field}: "):
        message = message[len(field) + 2 :]
    return {field: message}


def _strip_value_error(message: str) -> str:
    return message.removeprefix("Value error, ")


def toast_response(
    message: str,
    *,
    kind: str = "ok",
    status_code: int = 200,
    refresh: bool = False,
    close_dialog: bool = False,
) -> Response:
    """An empty answer whose only effects are client events (toast, refresh, close)."""
    response = Response(status_code=status_code, content=b"")
    # Nothing to swap: the events below say what to do.
    response.headers["HX-Reswap"] = "none"
    return with_events(
        response,
        toast=(message, kind),
        refresh=refresh,
        close_dialog=close_dialog,
    )


def with_events(
    response: Response,
    *,
    toast: tuple[str, str] | None = None,
    refresh: bool = False,
    close_dialog: bool = False,
    clear_selection: bool = False,
) -> Response:
    """Attach client-side events for admin.js through htmx's ``HX-Trigger`` header."""
    events: dict[str, Any] = {}
    if close_dialog:
        events["admin:close-dialog"] = True
    if clear_selection:
        events["admin:clear-selection"] = True
    if refresh:
        events["admin:refresh"] = True
    if toast is not None:
        events["admin:toast"] = {"message": toast[0], "kind": toast[1]}
    if events:
        # ASCII-only JSON: header values must be latin-1, names need not be.
        response.headers["HX-Trigger"] = json.dumps(events, ensure_ascii=True)
    return response


def query_string(**params: Any) -> str:
    """A query string without empty parameters, for links that keep the current filters."""
    clean = {key: value for key, value in params.items() if value not in (None, "", False)}
    return urlencode(clean)


def optional_int(value: str | None) -> int | None:
    """A select box's or query string's whole number (ASCII digits, within a BIGINT);
    blank, or anything else, is absent."""
    return parse_count(value)


def parse_page(value: str | None) -> int:
    """A list's page from its query string: 1 unless a page the list can reach."""
    return max(parse_count(value, maximum=MAX_OFFSET // PAGE_SIZE) or 1, 1)


async def admin_render(
    request: Request,
    session: AsyncSession,
    actor: Actor,
    template: str,
    *,
    section: str,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """Render a full admin page: the sidebar needs the badge and the organization."""
    from tokendesk.web.admin.sidebar import sidebar_context

    context.update(await sidebar_context(session, actor))
    return render(request, template, status_code=status_code, section=section, **context)


async def org_timezone(session: AsyncSession, actor: Actor) -> str:
    """The active organization's time zone: exact times on hover are shown in it."""
    return (await get_organization(session, actor.organization_id)).timezone
