"""Integrations: the keys chat apps call the gateway with; list, create (the key shown
once, with the settings to paste into the chat app), revoke. Org admins only."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts import integrations as integrations_service
from tokendesk.accounts.actor import Actor
from tokendesk.accounts.auth import settings_of
from tokendesk.accounts.models import IdentityPreset
from tokendesk.accounts.schemas import IntegrationIn
from tokendesk.bounds import path_id
from tokendesk.deps import DbSession, ReadSession, runtime_of
from tokendesk.errors import AppError
from tokendesk.web.admin.common import (
    AdminPageActor,
    AdminPageReader,
    AdminRoute,
    admin_render,
    org_timezone,
    with_events,
)
from tokendesk.web.admin.forms import FormError, build, errors_of
from tokendesk.web.pages import render

router = APIRouter(route_class=AdminRoute, include_in_schema=False)

IntegrationPathId = Annotated[int, path_id("integration")]

PRESET_LABELS = {
    IdentityPreset.OPEN_WEBUI.value: "Open WebUI",
    IdentityPreset.LIBRECHAT.value: "LibreChat",
    IdentityPreset.GENERIC.value: "Other (generic)",
}


def gateway_url(request: Request) -> str:
    """The gateway's address as the chat app must reach it: the public one if set."""
    public = settings_of(request).public_url
    return (public or str(request.base_url).rstrip("/")) + "/v1"


async def _context(session: AsyncSession, actor: Actor) -> dict[str, Any]:
    return {
        "rows": await integrations_service.list_integrations(session, actor=actor),
        "presets": PRESET_LABELS,
        "create_errors": {},
        "create_values": {},
        "created": None,
        "tz": await org_timezone(session, actor),
    }


@router.get("/admin/integrations", response_class=HTMLResponse)
async def integrations_page(
    request: Request, session: ReadSession, actor: AdminPageReader
) -> HTMLResponse:
    return await admin_render(
        request,
        session,
        actor,
        "admin/integrations/list.html",
        section="integrations",
        page_title="Integrations",
        **await _context(session, actor),
    )


@router.post("/admin/integrations", response_model=None)
async def create_integration(
    request: Request,
    session: DbSession,
    actor: AdminPageActor,
    name: Annotated[str, Form()] = "",
    preset: Annotated[str, Form()] = "",
    jwt_secret: Annotated[str, Form()] = "",
    user_id_header: Annotated[str, Form()] = "",
    email_header: Annotated[str, Form()] = "",
    name_header: Annotated[str, Form()] = "",
) -> Response:
    # The secret is never sent back into the form: typed once, like a password.
    values = {
        "name": name,
        "preset": preset,
        "user_id_header": user_id_header,
        "email_header": email_header,
        "name_header": name_header,
    }
    submitted = {key: value.strip() or None for key, value in values.items()}
    submitted["jwt_secret"] = jwt_secret or None
    submitted["name"] = name
    try:
        data = build(IntegrationIn, submitted)
        async with session.begin_nested():
            integration, key = await integrations_service.create_integration_as(
                session, actor=actor, data=data
            )
    except (AppError, FormError) as exc:
        context = await _context(session, actor)
        context.update(create_errors=errors_of(exc), create_values=values)
        return render(
            request,
            "admin/integrations/_list.html",
            status_code=exc.status_code if isinstance(exc, AppError) else 422,
            **context,
        )
    context = await _context(session, actor)
    context["created"] = {
        "integration": integration,
        "key": key,
        "gateway_url": gateway_url(request),
        # LibreChat's custom endpoint needs its default models listed by name.
        "models": sorted(runtime_of(request).gateway.models),
        "signed": data.jwt_secret is not None,
    }
    return with_events(
        render(request, "admin/integrations/_list.html", **context),
        toast=(f"Created integration {integration.name}.", "ok"),
    )


@router.post("/admin/integrations/{integration_id}/revoke", response_model=None)
async def revoke_integration(
    request: Request, session: DbSession, actor: AdminPageActor, integration_id: IntegrationPathId
) -> Response:
    async with session.begin_nested():
        revoked = await integrations_service.revoke_integration(
            session, actor=actor, integration_id=integration_id
        )
    return with_events(
        render(request, "admin/integrations/_list.html", **await _context(session, actor)),
        toast=(f"Revoked integration {revoked.name}: its key stops working now.", "ok"),
    )
