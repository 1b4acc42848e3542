"""Users: the directory and creating people (one person's page: ``person``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts import teams as teams_service
from tokendesk.accounts import users as users_service
from tokendesk.accounts.actor import Actor
from tokendesk.accounts.models import Role
from tokendesk.accounts.schemas import UserIn
from tokendesk.accounts.sign_in_ways import last_seen, sign_in_ways
from tokendesk.deps import DbSession, ReadSession, runtime_of
from tokendesk.errors import AppError
from tokendesk.web.admin.common import (
    PAGE_SIZE,
    AdminPageActor,
    AdminPageReader,
    AdminRoute,
    admin_render,
    optional_int,
    parse_page,
    query_string,
)
from tokendesk.web.admin.forms import FormError, build, errors_of, number
from tokendesk.web.pages import render

router = APIRouter(route_class=AdminRoute, include_in_schema=False)

ROLE_CHOICES = (
    (Role.MEMBER.value, "Member"),
    (Role.TEAM_OWNER.value, "Team owner"),
    (Role.ORG_ADMIN.value, "Org admin"),
    (Role.SUPER_ADMIN.value, "Super admin"),
)
SOURCE_LABELS = {"override": "override", "team": "team default", "organization": "org default"}


Q = Annotated[str | None, Query()]


def roles_for(actor: Actor) -> list[tuple[str, str]]:
    """Roles worth offering; the service still decides what each caller may grant."""
    if not actor.is_org_admin:
        return [ROLE_CHOICES[0]]
    if actor.is_super_admin:
        return list(ROLE_CHOICES)
    return list(ROLE_CHOICES[:3])


def provider_labels(request: Request) -> dict[str, str]:
    """The configured identity providers' button labels, by their identities' source."""
    return {p.source: p.button for p in runtime_of(request).sso.providers.values()}


async def _teams_for(session: AsyncSession, actor: Actor) -> list[tuple[int, str]]:
    rows = await teams_service.list_teams(session, actor=actor)
    return [(row.team.id, row.team.name) for row in rows if actor.can_manage_team(row.team.id)]


# ------------------------------------------------------------------ the directory


@router.get("/admin/users", response_class=HTMLResponse)
async def users_page(
    request: Request,
    session: ReadSession,
    actor: AdminPageReader,
    q: Q = None,
    team_id: Q = None,
    role: Q = None,
    status: Q = None,
    page: Q = None,
) -> HTMLResponse:
    search = (q or "").strip()[:200]
    chosen_team = optional_int(team_id)
    chosen_role = Role(role) if role in dict(ROLE_CHOICES) else None
    chosen_status = status if status in ("active", "inactive") else None
    filters: dict[str, Any] = {
        "q": search,
        "team_id": chosen_team,
        "role": chosen_role.value if chosen_role else None,
        "status": chosen_status,
    }
    page_number = parse_page(page)
    rows, total = await users_service.list_users(
        session,
        actor=actor,
        q=search or None,
        team_id=chosen_team,
        role=chosen_role,
        active=None if chosen_status is None else chosen_status == "active",
        limit=PAGE_SIZE,
        offset=(page_number - 1) * PAGE_SIZE,
    )
    ways = await sign_in_ways(
        session, [row.user for row in rows], provider_labels=provider_labels(request)
    )
    return await admin_render(
        request,
        session,
        actor,
        "admin/users/list.html",
        section="users",
        page_title="Users",
        rows=rows,
        total=total,
        filters=filters,
        page=page_number,
        pages=max(1, -(-total // PAGE_SIZE)),
        page_url=lambda n: "/admin/users?" + query_string(**filters, page=n if n > 1 else None),
        teams=await _teams_for(session, actor),
        roles=ROLE_CHOICES,
        source_labels=SOURCE_LABELS,
        ways=ways,
        last_seen=last_seen,
    )


def _create_form(
    request: Request,
    actor: Actor,
    teams: list[tuple[int, str]],
    *,
    values: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    return render(
        request,
        "admin/users/_create_dialog.html",
        status_code=status_code,
        values=values or {"role": Role.MEMBER.value},
        errors=errors or {},
        roles=roles_for(actor),
        teams=teams,
    )


@router.get("/admin/users/new", response_class=HTMLResponse)
async def new_user(request: Request, session: ReadSession, actor: AdminPageReader) -> HTMLResponse:
    return _create_form(request, actor, await _teams_for(session, actor))


@router.post("/admin/users", response_model=None)
async def create_user(
    request: Request,
    session: DbSession,
    actor: AdminPageActor,
    email: Annotated[str, Form()] = "",
    name: Annotated[str, Form()] = "",
    role: Annotated[str, Form()] = "member",
    team_id: Annotated[str, Form()] = "",
    allocation_override: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
) -> Response:
    values = {
        "email": email.strip(),
        "name": name,
        "role": role,
        "team_id": team_id,
        "allocation_override": allocation_override,
    }
    try:
        data = build(
            UserIn,
            {
                "email": email.strip(),
                "name": name,
                "role": role,
                "team_id": number(team_id),
                "allocation_override": number(allocation_override),
                "password": password or None,
            },
        )
        async with session.begin_nested():
            row = await users_service.create_user_as(session, actor=actor, data=data)
    except (AppError, FormError) as exc:
        status_code = exc.status_code if isinstance(exc, AppError) else 422
        teams = await _teams_for(session, actor)
        return _create_form(
            request, actor, teams, values=values, errors=errors_of(exc), status_code=status_code
        )
    response = Response(status_code=200)
    response.headers["HX-Redirect"] = f"/admin/users/{row.user.id}?created=1"
    return response
