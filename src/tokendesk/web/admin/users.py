"""Users: the directory, creating people, editing them, adjustments and their ledger."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts import adjustments
from tokendesk.accounts import teams as teams_service
from tokendesk.accounts import users as users_service
from tokendesk.accounts.actor import Actor
from tokendesk.accounts.models import Role
from tokendesk.accounts.repository import UserRow
from tokendesk.accounts.schemas import AdjustmentIn, UserIn, UserUpdate
from tokendesk.deps import DbSession, ReadSession, database_of, prepared_password
from tokendesk.errors import AppError
from tokendesk.web.admin.common import (
    PAGE_SIZE,
    AdminPageActor,
    AdminPageReader,
    AdminReadingActor,
    AdminRoute,
    UserPathId,
    admin_render,
    optional_int,
    org_timezone,
    parse_page,
    query_string,
    with_events,
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
EDITABLE_BY_ORG_ADMIN = frozenset(
    {"name", "role", "team_id", "allocation_override", "is_active", "password"}
)
LEDGER_PAGE = 50

Q = Annotated[str | None, Query()]


def _roles_for(actor: Actor) -> list[tuple[str, str]]:
    """Roles worth offering; the service still decides what each caller may grant."""
    if not actor.is_org_admin:
        return [ROLE_CHOICES[0]]
    if actor.is_super_admin:
        return list(ROLE_CHOICES)
    return list(ROLE_CHOICES[:3])


async def _teams_for(session: AsyncSession, actor: Actor) -> list[tuple[int, str]]:
    rows = await teams_service.list_teams(session, actor=actor)
    return [(row.team.id, row.team.name) for row in rows if actor.can_manage_team(row.team.id)]


def _editable(actor: Actor, row: UserRow) -> frozenset[str]:
    """Which controls to enable: the same sets the users service enforces."""
    if row.user.id == actor.user_id:
        return users_service.SELF_EDITABLE
    if actor.is_org_admin:
        return EDITABLE_BY_ORG_ADMIN
    return users_service.TEAM_OWNER_EDITABLE


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
        roles=_roles_for(actor),
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


# ------------------------------------------------------------------ one person


async def _detail_context(
    session: AsyncSession, actor: Actor, user_id: int, *, ledger_page: int
) -> dict[str, Any]:
    row = await users_service.get_user(session, actor=actor, user_id=user_id)
    entries, entries_total = await users_service.ledger_entries(
        session,
        actor=actor,
        user_id=user_id,
        limit=LEDGER_PAGE,
        offset=(ledger_page - 1) * LEDGER_PAGE,
    )
    org_teams = await teams_service.list_teams(session, actor=actor)
    return {
        "row": row,
        "user": row.user,
        "balance": row.balance,
        "entries": entries,
        "entries_total": entries_total,
        "ledger_page": ledger_page,
        "ledger_pages": max(1, -(-entries_total // LEDGER_PAGE)),
        "editable": _editable(actor, row),
        "can_adjust": row.user.id != actor.user_id,
        "own_account": row.user.id == actor.user_id,
        "roles": _roles_for(actor) if actor.is_org_admin else ROLE_CHOICES,
        "teams": [(t.team.id, t.team.name) for t in org_teams],
        "movable_teams": {t.team.id for t in org_teams if actor.can_manage_team(t.team.id)},
        "source_labels": SOURCE_LABELS,
        "edit_errors": {},
        "adjust_errors": {},
        "adjust_values": {},
    }


@router.get("/admin/users/{user_id}", response_class=HTMLResponse)
async def user_page(
    request: Request,
    session: ReadSession,
    actor: AdminPageReader,
    user_id: UserPathId,
    page: Q = None,
    created: Q = None,
) -> HTMLResponse:
    context = await _detail_context(session, actor, user_id, ledger_page=parse_page(page))
    return await admin_render(
        request,
        session,
        actor,
        "admin/users/detail.html",
        section="users",
        page_title=context["user"].name,
        created=bool(created),
        **context,
    )


async def _detail_fragment(
    request: Request,
    session: AsyncSession,
    actor: Actor,
    user_id: int,
    *,
    status_code: int = 200,
    **overrides: Any,
) -> HTMLResponse:
    context = await _detail_context(session, actor, user_id, ledger_page=1)
    context.update(overrides)
    return render(
        request,
        "admin/users/_detail.html",
        status_code=status_code,
        tz=await org_timezone(session, actor),
        **context,
    )


def _changed(row: UserRow, submitted: dict[str, Any]) -> dict[str, Any]:
    """Only what the form actually changes: the service treats every field sent as
    a change to check, and a team owner may not even re-send a role unchanged."""
    user = row.user
    current = {
        "name": user.name,
        "role": user.role,
        "team_id": user.team_id,
        "allocation_override": user.allocation_override,
        "is_active": user.is_active,
    }
    changes = {
        key: value for key, value in submitted.items() if key in current and value != current[key]
    }
    if submitted.get("password"):
        changes["password"] = submitted["password"]
    return changes


@router.post("/admin/users/{user_id}", response_model=None)
async def update_user(
    request: Request,
    actor: AdminReadingActor,
    user_id: UserPathId,
    name: Annotated[str | None, Form()] = None,
    role: Annotated[str | None, Form()] = None,
    team_id: Annotated[str | None, Form()] = None,
    allocation_override: Annotated[str | None, Form()] = None,
    is_active: Annotated[str | None, Form()] = None,
    active_shown: Annotated[str | None, Form()] = None,
    password: Annotated[str | None, Form()] = None,
    current_password: Annotated[str | None, Form()] = None,
) -> Response:
    # Transactions of its own: a new password is checked and hashed between them.
    database = database_of(request)
    async with database.transaction() as session:
        row = await users_service.get_user(session, actor=actor, user_id=user_id)
    submitted: dict[str, Any] = {}
    if name is not None:
        submitted["name"] = name.strip()
    if role is not None:
        submitted["role"] = role
    if team_id is not None:
        submitted["team_id"] = number(team_id)
    if allocation_override is not None:
        submitted["allocation_override"] = number(allocation_override)
    if active_shown is not None:
        # An unticked checkbox sends nothing; the hidden marker says the box was on the form.
        submitted["is_active"] = is_active is not None
    if password:
        submitted["password"] = password
    changes = _changed(row, submitted)
    if "password" in changes and current_password:
        changes["current_password"] = current_password
    try:
        if not changes:
            async with database.transaction() as session:
                return with_events(
                    await _detail_fragment(request, session, actor, user_id),
                    toast=("Nothing to save: no field changed.", "ok"),
                )
        data = build(UserUpdate, changes)
        new_password = await prepared_password(request, actor=actor, user_id=user_id, data=data)
        async with database.transaction() as session:
            await users_service.update_user(
                session, actor=actor, user_id=user_id, data=data, new_password=new_password
            )
            return with_events(
                await _detail_fragment(request, session, actor, user_id),
                toast=(f"Saved {row.user.name}.", "ok"),
            )
    except (AppError, FormError) as exc:
        async with database.transaction() as session:
            return await _detail_fragment(
                request,
                session,
                actor,
                user_id,
                status_code=exc.status_code if isinstance(exc, AppError) else 422,
                edit_errors=_errors_on_form(errors_of(exc), EDIT_FIELDS),
                edit_values=submitted,
            )


EDIT_FIELDS = frozenset(
    {"name", "role", "team_id", "allocation_override", "is_active", "password", "current_password"}
)


def _errors_on_form(errors: dict[str, str], fields: frozenset[str]) -> dict[str, str]:
    """Errors for fields this form has stay by their control; the rest go to the top.

    A service message may name several fields ("role, team_id: ..."): show it at the top.
    """
    placed: dict[str, str] = {}
    for field, message in errors.items():
        if field in fields:
            placed[field] = message
        else:
            prefix = f"{field}: " if field and not message.startswith(field) else ""
            placed[""] = f"{placed[''] + ' ' if '' in placed else ''}{prefix}{message}"
    return placed


@router.post("/admin/users/{user_id}/adjustments", response_model=None)
async def adjust(
    request: Request,
    session: DbSession,
    actor: AdminPageActor,
    user_id: UserPathId,
    amount: Annotated[str, Form()] = "",
    note: Annotated[str, Form()] = "",
) -> Response:
    try:
        data = build(AdjustmentIn, {"amount": number(amount), "note": note})
        async with session.begin_nested():
            balance = await adjustments.adjust_balance(
                session, actor=actor, user_id=user_id, amount=data.amount, note=data.note
            )
            remaining = balance.remaining
    except (AppError, FormError) as exc:
        return await _detail_fragment(
            request,
            session,
            actor,
            user_id,
            status_code=exc.status_code if isinstance(exc, AppError) else 422,
            adjust_errors=_errors_on_form(errors_of(exc), frozenset({"amount", "note"})),
            adjust_values={"amount": amount, "note": note},
        )
    return with_events(
        await _detail_fragment(request, session, actor, user_id),
        toast=(f"Adjusted by {data.amount:+,} tokens; {remaining:,} left.", "ok"),
    )
