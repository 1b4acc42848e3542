"""The audit log, filtered by actor, action, target and date."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from tokendesk.accounts import users as users_service
from tokendesk.audit.models import AuditEntry
from tokendesk.audit.repository import AuditFilter, AuditRow, audit_page
from tokendesk.deps import ReadSession
from tokendesk.ledger.periods import local_midnight, zone
from tokendesk.web.admin.common import (
    PAGE_SIZE,
    AdminPageReader,
    AdminRoute,
    admin_render,
    optional_int,
    org_timezone,
    parse_page,
    query_string,
)

router = APIRouter(route_class=AdminRoute, include_in_schema=False)

# Every action the services record, for the filter's menu.
ACTIONS = (
    "token_request.created",
    "token_request.approved",
    "token_request.rejected",
    "token_request.cancelled",
    "balance.adjusted",
    "gateway.overrun",
    "user.created",
    "user.updated",
    "user.login",
    "team.created",
    "team.updated",
    "team.deleted",
    "team.owner_added",
    "team.owner_removed",
    "organization.created",
    "organization.updated",
    "api_key.created",
    "api_key.revoked",
)
TARGET_TYPES = (
    ("token_request", "Token request"),
    ("user", "User"),
    ("team", "Team"),
    ("organization", "Organization"),
    ("api_key", "API key"),
)
PEOPLE_LIMIT = 500

Q = Annotated[str | None, Query()]


def _day(value: str | None) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


def target_link(entry: AuditEntry) -> str | None:
    if entry.target_id is None:
        return None
    if entry.target_type == "user":
        return f"/admin/users/{entry.target_id}"
    if entry.target_type == "team":
        return f"/admin/teams/{entry.target_id}"
    if entry.target_type == "token_request":
        return f"/admin/requests?status=all#request-{entry.target_id}"
    return None


def describe(details: dict[str, Any] | None) -> str:
    """A one-line reading of an entry's details: ``key: value · key: value``."""
    parts = []
    for key, value in (details or {}).items():
        if value is None or value == {} or value == []:
            continue
        if isinstance(value, bool):
            value = "yes" if value else "no"
        elif isinstance(value, int):
            value = f"{value:,}"
        parts.append(f"{key.replace('_', ' ')}: {value}")
    return " · ".join(parts)


@router.get("/admin/audit", response_class=HTMLResponse)
async def audit_log(
    request: Request,
    session: ReadSession,
    actor: AdminPageReader,
    actor_id: Q = None,
    action: Q = None,
    target_type: Q = None,
    target_id: Q = None,
    since: Q = None,
    until: Q = None,
    page: Q = None,
) -> HTMLResponse:
    context: dict[str, Any] = {"allowed": actor.is_org_admin}
    # Like GET /api/v1/audit: the trail is for org admins.
    if actor.is_org_admin:
        tz = await org_timezone(session, actor)
        since_day, until_day = _day(since), _day(until)
        chosen_actor = optional_int(actor_id)
        chosen_action = action if action in ACTIONS else None
        chosen_type = target_type if target_type in dict(TARGET_TYPES) else None
        chosen_target = (target_id or "").strip()[:64] or None
        filters: dict[str, Any] = {
            "actor_id": chosen_actor,
            "action": chosen_action,
            "target_type": chosen_type,
            "target_id": chosen_target,
            "since": since_day.isoformat() if since_day else None,
            "until": until_day.isoformat() if until_day else None,
        }
        error = None
        if since_day and until_day and until_day < since_day:
            error = "To: must not be before From."
        page_number = parse_page(page)
        # Dates are the organization's calendar days; "To" includes the whole day.
        local = zone(tz)
        rows: list[AuditRow] = []
        total = 0
        if error is None:
            rows, total = await audit_page(
                session,
                AuditFilter(
                    organization_id=actor.organization_id,
                    actor_id=chosen_actor,
                    action=chosen_action,
                    target_type=chosen_type,
                    target_id=chosen_target,
                    since=local_midnight(since_day, local) if since_day else None,
                    until=(
                        local_midnight(until_day + timedelta(days=1), local) if until_day else None
                    ),
                ),
                limit=PAGE_SIZE,
                offset=(page_number - 1) * PAGE_SIZE,
            )
        people, _ = await users_service.list_users(session, actor=actor, limit=PEOPLE_LIMIT)
        context.update(
            filters=filters,
            error=error,
            rows=rows,
            total=total,
            page=page_number,
            pages=max(1, -(-total // PAGE_SIZE)),
            page_url=lambda n: "/admin/audit?" + query_string(**filters, page=n),
            people=[(row.user.id, row.user.name) for row in people],
            actions=ACTIONS,
            target_types=TARGET_TYPES,
            target_link=target_link,
            describe=describe,
        )
    return await admin_render(
        request,
        session,
        actor,
        "admin/audit.html",
        section="audit",
        page_title="Audit log",
        **context,
    )
