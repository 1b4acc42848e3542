"""Organization settings, with a live preview of the next reset and the pool's figures."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts import organizations
from tokendesk.accounts import teams as teams_service
from tokendesk.accounts.actor import Actor
from tokendesk.accounts.schemas import OrganizationUpdate
from tokendesk.db import utcnow
from tokendesk.deps import DbSession, ReadSession, runtime_of
from tokendesk.errors import AppError
from tokendesk.ledger.periods import is_valid_timezone, next_reset
from tokendesk.web.admin.common import (
    AdminPageActor,
    AdminPageReader,
    AdminRoute,
    admin_render,
    optional_int,
    with_events,
)
from tokendesk.web.admin.forms import FormError, build, errors_of, number
from tokendesk.web.admin.notifications import channels_context
from tokendesk.web.admin.rules import rules_context
from tokendesk.web.admin.top_up import top_up_context
from tokendesk.web.pages import render

router = APIRouter(route_class=AdminRoute, include_in_schema=False)

FIELDS = (
    "name",
    "default_allocation",
    "reset_day",
    "timezone",
    "max_request",
    "low_balance_percent",
    "pool",
    "carry_over_debt",
    "password_sign_in",
    "provision_users",
    "provision_domains",
    "provision_team_id",
)


@lru_cache(maxsize=1)
def timezone_names() -> list[str]:
    from zoneinfo import available_timezones

    return sorted(available_timezones())


def _current_values(view: organizations.OrganizationView) -> dict[str, Any]:
    org = view.organization
    values = {name: getattr(org, name) for name in FIELDS}
    values["provision_domains"] = ", ".join(organizations.domains_of(org.provision_domains))
    return values


def _domain_list(raw: str) -> list[str]:
    """The form's domains, separated by commas, spaces or lines."""
    return [part for part in raw.replace(",", " ").split() if part]


async def _context(session: AsyncSession, actor: Actor) -> dict[str, Any]:
    view = await organizations.get_settings(session, actor=actor)
    return {
        "view": view,
        "org": view.organization,
        "values": _current_values(view),
        "errors": {},
        "can_edit": actor.is_org_admin,
        "teams": [
            (row.team.id, row.team.name)
            for row in await teams_service.list_teams(session, actor=actor)
        ],
        "timezones": timezone_names(),
        "preview": _preview(view.organization.reset_day, view.organization.timezone),
    }


def _preview(reset_day: int | None, timezone: str | None) -> dict[str, Any]:
    """The next reset under the given day and zone, by the ledger's own period rule."""
    if reset_day is None or not 1 <= reset_day <= 28:
        return {"error": "Pick a reset day between 1 and 28."}
    if not timezone or not is_valid_timezone(timezone):
        return {"error": f"Unknown time zone {timezone!r}." if timezone else "Pick a time zone."}
    now = utcnow()
    at: datetime = next_reset(now, reset_day=reset_day, timezone=timezone)
    return {"at": at, "timezone": timezone, "days": max(0, (at - now).days)}


@router.get("/admin/settings", response_class=HTMLResponse)
async def settings_page(
    request: Request, session: ReadSession, actor: AdminPageReader
) -> HTMLResponse:
    return await admin_render(
        request,
        session,
        actor,
        "admin/settings.html",
        section="settings",
        page_title="Settings",
        **await _context(session, actor),
        **await rules_context(session, actor),
        **await top_up_context(session, actor),
        **await channels_context(request, session, actor),
    )


@router.get("/admin/settings/next-reset", response_class=HTMLResponse)
async def next_reset_preview(
    request: Request,
    actor: AdminPageReader,
    reset_day: Annotated[str | None, Query()] = None,
    timezone: Annotated[str | None, Query()] = None,
) -> HTMLResponse:
    """The preview fragment, recomputed on the server as the form changes."""
    preview = _preview(optional_int(reset_day), (timezone or "").strip())
    return render(request, "admin/_reset_preview.html", preview=preview)


@router.post("/admin/settings", response_model=None)
async def save_settings(
    request: Request,
    session: DbSession,
    actor: AdminPageActor,
    name: Annotated[str, Form()] = "",
    default_allocation: Annotated[str, Form()] = "",
    reset_day: Annotated[str, Form()] = "",
    timezone: Annotated[str, Form()] = "",
    max_request: Annotated[str, Form()] = "",
    low_balance_percent: Annotated[str, Form()] = "",
    pool: Annotated[str, Form()] = "",
    checkboxes_shown: Annotated[str | None, Form()] = None,
    carry_over_debt: Annotated[str | None, Form()] = None,
    password_sign_in: Annotated[str | None, Form()] = None,
    provision_users: Annotated[str | None, Form()] = None,
    provision_domains: Annotated[str, Form()] = "",
    provision_team_id: Annotated[str, Form()] = "",
) -> Response:
    submitted: dict[str, Any] = {
        "name": name.strip(),
        "default_allocation": number(default_allocation),
        "reset_day": number(reset_day),
        "timezone": timezone.strip(),
        "max_request": number(max_request),
        "low_balance_percent": number(low_balance_percent),
        # An empty pool field means "no pool", which the schema spells as null.
        "pool": number(pool),
        "provision_domains": _domain_list(provision_domains),
        "provision_team_id": number(provision_team_id),
    }
    # An unticked box sends nothing: the hidden marker tells it from a form without them.
    if checkboxes_shown is not None:
        submitted["carry_over_debt"] = carry_over_debt is not None
        submitted["password_sign_in"] = password_sign_in is not None
        submitted["provision_users"] = provision_users is not None
    current = await organizations.get_settings(session, actor=actor)
    stored = {name: getattr(current.organization, name) for name in submitted}
    stored["provision_domains"] = organizations.domains_of(current.organization.provision_domains)
    changes = {key: value for key, value in submitted.items() if value != stored[key]}
    try:
        data = build(OrganizationUpdate, changes)
        async with session.begin_nested():
            await organizations.update_settings(
                session,
                actor=actor,
                data=data,
                sso_organizations=runtime_of(request).sso.organizations,
            )
    except (AppError, FormError) as exc:
        context = await _context(session, actor)
        raw = {
            "name": name,
            "default_allocation": default_allocation,
            "reset_day": reset_day,
            "timezone": timezone,
            "max_request": max_request,
            "low_balance_percent": low_balance_percent,
            "pool": pool,
            "carry_over_debt": submitted.get(
                "carry_over_debt", current.organization.carry_over_debt
            ),
            "password_sign_in": submitted.get(
                "password_sign_in", current.organization.password_sign_in
            ),
            "provision_users": submitted.get(
                "provision_users", current.organization.provision_users
            ),
            "provision_domains": provision_domains,
            "provision_team_id": optional_int(provision_team_id),
        }
        context.update(
            values=raw,
            errors=errors_of(exc),
            preview=_preview(optional_int(reset_day), timezone.strip()),
        )
        return render(
            request,
            "admin/_settings_form.html",
            status_code=exc.status_code if isinstance(exc, AppError) else 422,
            **context,
        )
    context = await _context(session, actor)
    message = "Settings saved." if changes else "Nothing to save: no setting changed."
    return with_events(
        render(request, "admin/_settings_form.html", **context), toast=(message, "ok")
    )
