"""Notifications on the Settings page (org admins): email on or off, the usage and
pool thresholds, webhooks added (the secret shown once) and removed, a test per
channel; and the delivery view of what is still pending or was given up."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts import teams as teams_service
from tokendesk.accounts.actor import Actor
from tokendesk.accounts.auth import settings_of
from tokendesk.accounts.service import require_org_admin
from tokendesk.bounds import path_id
from tokendesk.deps import DbSession, ReadSession
from tokendesk.errors import AppError
from tokendesk.notifications import channels
from tokendesk.notifications.models import WebhookFormat
from tokendesk.notifications.schemas import NotificationSettingsIn, WebhookIn
from tokendesk.web.admin.common import (
    AdminPageActor,
    AdminPageReader,
    AdminRoute,
    admin_render,
    org_timezone,
    with_events,
)
from tokendesk.web.admin.forms import FormError, build, errors_of, number
from tokendesk.web.pages import render

router = APIRouter(route_class=AdminRoute, include_in_schema=False)

WebhookPathId = Annotated[int, path_id("webhook")]
FORMAT_LABELS = {
    WebhookFormat.SLACK.value: "Slack",
    WebhookFormat.TEAMS.value: "Microsoft Teams",
    WebhookFormat.JSON.value: "Generic JSON",
}
FRAGMENT = "admin/notifications/_channels.html"
VIEW_LABELS = {
    "attention": "Needs attention",
    "pending": "Pending",
    "failed": "Failed",
    "all": "All",
}


async def channels_context(request: Request, session: AsyncSession, actor: Actor) -> dict[str, Any]:
    """What the Settings page's notifications section shows; empty for team owners."""
    if not actor.is_org_admin:
        return {"notify": None}
    settings = settings_of(request)
    teams = {
        row.team.id: row.team.name for row in await teams_service.list_teams(session, actor=actor)
    }
    return {
        "notify": {
            "settings": await channels.read_settings(session, actor=actor, settings=settings),
            "webhooks": await channels.list_webhooks(session, actor=actor),
            "teams": teams,
            "formats": FORMAT_LABELS,
            "errors": {},
            "form_values": {},
            "created": None,
            "attention": (await channels.list_deliveries(session, actor=actor, limit=1)).total,
        }
    }


async def _fragment(
    request: Request,
    session: AsyncSession,
    actor: Actor,
    *,
    toast: str | None = None,
    status_code: int = 200,
    **changes: Any,
) -> Response:
    context = await channels_context(request, session, actor)
    context["notify"].update(changes)
    response = render(request, FRAGMENT, status_code=status_code, **context)
    return with_events(response, toast=(toast, "ok")) if toast else response


def _thresholds(raw: str) -> list[object]:
    """The form's percentages, separated by commas or spaces; a word stays a word for
    the schema to name."""
    return [number(part) for part in raw.replace(",", " ").split()]


@router.post("/admin/notifications/settings", response_model=None)
async def save_settings(
    request: Request,
    session: DbSession,
    actor: AdminPageActor,
    email_enabled: Annotated[str | None, Form()] = None,
    usage_thresholds: Annotated[str, Form(max_length=200)] = "",
    pool_threshold: Annotated[str, Form(max_length=20)] = "",
    digest_enabled: Annotated[str | None, Form()] = None,
    digest_hour: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    require_org_admin(actor)
    values = {
        "usage_thresholds": usage_thresholds,
        "pool_threshold": pool_threshold,
        "digest_hour": digest_hour,
    }
    submitted: dict[str, Any] = {
        "email_enabled": email_enabled is not None,
        "usage_thresholds": _thresholds(usage_thresholds),
        "digest_enabled": digest_enabled is not None,
    }
    if digest_hour.strip():
        submitted["digest_hour"] = number(digest_hour)
    if pool_threshold.strip():
        submitted["pool_threshold"] = number(pool_threshold)
    else:
        submitted["clear_pool_threshold"] = True
    try:
        data = build(NotificationSettingsIn, submitted)
        async with session.begin_nested():
            await channels.update_settings(
                session, actor=actor, data=data, settings=settings_of(request)
            )
    except (AppError, FormError) as exc:
        errors = {key.split(".")[0]: message for key, message in errors_of(exc).items()}
        return await _fragment(
            request, session, actor, errors=errors, form_values=values, status_code=422
        )
    return await _fragment(request, session, actor, toast="Notification settings saved.")


@router.post("/admin/notifications/webhooks", response_model=None)
async def add_webhook(
    request: Request,
    session: DbSession,
    actor: AdminPageActor,
    name: Annotated[str, Form(max_length=200)] = "",
    url: Annotated[str, Form(max_length=4000)] = "",
    format: Annotated[str, Form(max_length=20)] = "",
    team_id: Annotated[str, Form(max_length=30)] = "",
) -> Response:
    require_org_admin(actor)
    values = {"name": name, "url": url, "format": format, "team_id": team_id}
    submitted: dict[str, Any] = {"name": name, "url": url, "format": format or "json"}
    if team_id.strip():
        submitted["team_id"] = number(team_id)
    try:
        data = build(WebhookIn, submitted)
        async with session.begin_nested():
            row, secret = await channels.create_webhook(session, actor=actor, data=data)
    except (AppError, FormError) as exc:
        return await _fragment(
            request, session, actor, errors=errors_of(exc), form_values=values, status_code=422
        )
    return await _fragment(
        request,
        session,
        actor,
        created={"webhook": row, "secret": secret},
        toast=f"Added webhook {row.name}.",
    )


@router.post("/admin/notifications/webhooks/{webhook_id}/delete", response_model=None)
async def remove_webhook(
    request: Request, session: DbSession, actor: AdminPageActor, webhook_id: WebhookPathId
) -> Response:
    require_org_admin(actor)
    row = await channels.get_webhook(session, actor=actor, webhook_id=webhook_id)
    name = row.name
    await channels.delete_webhook(session, actor=actor, webhook_id=webhook_id)
    return await _fragment(request, session, actor, toast=f"Removed webhook {name}.")


@router.post("/admin/notifications/test", response_model=None)
async def send_test(
    request: Request,
    session: DbSession,
    actor: AdminPageActor,
    channel: Annotated[str, Form(max_length=20)] = "",
    webhook_id: Annotated[str, Form(max_length=30)] = "",
) -> Response:
    require_org_admin(actor)
    hook = number(webhook_id) if webhook_id.strip() else None
    if channel not in ("email", "webhook") or (hook is not None and not isinstance(hook, int)):
        return await _fragment(
            request, session, actor, errors={"": "Pick a channel to test."}, status_code=422
        )
    await channels.send_test(
        session, actor=actor, channel=channel, webhook_id=hook if isinstance(hook, int) else None
    )
    where = "your email address" if channel == "email" else "the webhook"
    return await _fragment(
        request,
        session,
        actor,
        toast=f"Test queued for {where}: see Deliveries if it does not arrive.",
    )


@router.get("/admin/settings/deliveries", response_class=HTMLResponse)
async def deliveries_page(
    request: Request,
    session: ReadSession,
    actor: AdminPageReader,
    view: Annotated[str, Query(max_length=20)] = "attention",
) -> HTMLResponse:
    if view not in VIEW_LABELS:
        view = "attention"
    page = await channels.list_deliveries(session, actor=actor, view=view, limit=channels.MAX_PAGE)
    return await admin_render(
        request,
        session,
        actor,
        "admin/notifications/deliveries.html",
        section="settings",
        page_title="Deliveries",
        page=page,
        view=view,
        views=VIEW_LABELS,
        tz=await org_timezone(session, actor),
    )
