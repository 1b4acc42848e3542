"""The organization's auto top-up on the Settings page: org admins turn it on and set
its figures; team owners see what it does. The rules are ``token_requests.top_ups``'."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.actor import Actor
from tokendesk.deps import DbSession
from tokendesk.errors import AppError
from tokendesk.token_requests import top_ups
from tokendesk.web.admin.common import AdminPageActor, AdminRoute, with_events
from tokendesk.web.admin.forms import errors_of, number
from tokendesk.web.pages import render

router = APIRouter(route_class=AdminRoute, include_in_schema=False)

FRAGMENT = "admin/rules/_top_up.html"
Figure = Annotated[str, Form(max_length=30)]


async def top_up_context(
    session: AsyncSession,
    actor: Actor,
    *,
    typed: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
) -> dict[str, Any]:
    """What the Settings page's auto top-up section shows: the saved rule (or the
    suggested figures, off), or what was typed beside what was refused."""
    saved = await top_ups.get_top_up(session, actor=actor)
    values: dict[str, Any] = saved.model_dump() if typed is None else typed
    return {
        "top_up": {
            "saved": saved,
            "fields": values,
            "errors": errors or {},
            "can_edit": actor.is_org_admin,
        }
    }


@router.post("/admin/top-up", response_model=None)
async def save_top_up(
    request: Request,
    session: DbSession,
    actor: AdminPageActor,
    enabled: Annotated[str | None, Form()] = None,
    trigger_percent: Figure = "",
    top_up_amount: Figure = "",
    cooldown_minutes: Figure = "",
    max_count: Figure = "",
    max_tokens: Figure = "",
    pool_floor: Figure = "",
) -> Response:
    typed: dict[str, Any] = {
        "enabled": enabled is not None,
        "trigger_percent": trigger_percent,
        "top_up_amount": top_up_amount,
        "cooldown_minutes": cooldown_minutes,
        "max_count": max_count,
        "max_tokens": max_tokens,
        "pool_floor": pool_floor,
    }
    values = {key: number(value) if key != "enabled" else value for key, value in typed.items()}
    try:
        async with session.begin_nested():
            saved = await top_ups.set_top_up(session, actor=actor, values=values)
    except AppError as exc:
        context = await top_up_context(session, actor, typed=typed, errors=errors_of(exc))
        return render(request, FRAGMENT, status_code=exc.status_code or 422, **context)
    state = "on" if saved.enabled else "off"
    response = render(request, FRAGMENT, **await top_up_context(session, actor))
    return with_events(response, toast=(f"Auto top-up saved: {state}.", "ok"))
