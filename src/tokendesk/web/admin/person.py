"""One person in the admin center: their page, edits, adjustments and their ledger."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts import adjustments
from tokendesk.accounts import teams as teams_service
from tokendesk.accounts import users as users_service
from tokendesk.accounts.actor import Actor
from tokendesk.accounts.repository import UserRow
from tokendesk.accounts.schemas import AdjustmentIn, UserUpdate
from tokendesk.accounts.sign_in_ways import sign_in_ways
from tokendesk.deps import DbSession, ReadSession, database_of, prepared_password
from tokendesk.errors import AppError
from tokendesk.web.admin.common import (
    AdminPageActor,
    AdminPageReader,
    AdminReadingActor,
    AdminRoute,
    UserPathId,
    admin_render,
    org_timezone,
    parse_page,
    with_events,
)
from tokendesk.web.admin.forms import FormError, build, errors_of, number
from tokendesk.web.admin.users import (
    ROLE_CHOICES,
    SOURCE_LABELS,
    Q,
    provider_labels,
    roles_for,
)
from tokendesk.web.pages import render

router = APIRouter(route_class=AdminRoute, include_in_schema=False)

EDITABLE_BY_ORG_ADMIN = frozenset(
    {"name", "role", "team_id", "allocation_override", "is_active", "password"}
)
LEDGER_PAGE = 50


def _editable(actor: Actor, row: UserRow) -> frozenset[str]:
    """Which controls to enable: the same sets the users service enforces."""
    if row.user.id == actor.user_id:
        return users_service.SELF_EDITABLE
    if actor.is_org_admin:
        return EDITABLE_BY_ORG_ADMIN
    return users_service.TEAM_OWNER_EDITABLE


async def _detail_context(
    request: Request, session: AsyncSession, actor: Actor, user_id: int, *, ledger_page: int
) -> dict[str, Any]:
    row = await users_service.get_user(session, actor=actor, user_id=user_id)
    ways = await sign_in_ways(session, [row.user], provider_labels=provider_labels(request))
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
        "roles": roles_for(actor) if actor.is_org_admin else ROLE_CHOICES,
        "teams": [(t.team.id, t.team.name) for t in org_teams],
        "movable_teams": {t.team.id for t in org_teams if actor.can_manage_team(t.team.id)},
        "source_labels": SOURCE_LABELS,
        "ways": ways[row.user.id],
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
    context = await _detail_context(request, session, actor, user_id, ledger_page=parse_page(page))
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
    context = await _detail_context(request, session, actor, user_id, ledger_page=1)
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
            return await _refused(
                request, session, actor, user_id, exc, form="edit", values=submitted
            )


# Each form's controls (the edit form has one for every field an org admin may edit,
# and the current password): a refusal's message for one of them stays by it.
FORM_FIELDS = {
    "edit": EDITABLE_BY_ORG_ADMIN | {"current_password"},
    "adjust": frozenset({"amount", "note"}),
}


async def _refused(
    request: Request,
    session: AsyncSession,
    actor: Actor,
    user_id: int,
    exc: AppError | FormError,
    *,
    form: str,
    values: dict[str, Any],
) -> HTMLResponse:
    """The person's page again, with the refusal's messages on ``form`` and what was typed."""
    return await _detail_fragment(
        request,
        session,
        actor,
        user_id,
        status_code=exc.status_code if isinstance(exc, AppError) else 422,
        **{
            f"{form}_errors": _errors_on_form(errors_of(exc), FORM_FIELDS[form]),
            f"{form}_values": values,
        },
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
        values = {"amount": amount, "note": note}
        return await _refused(request, session, actor, user_id, exc, form="adjust", values=values)
    return with_events(
        await _detail_fragment(request, session, actor, user_id),
        toast=(f"Adjusted by {data.amount:+,} tokens; {remaining:,} left.", "ok"),
    )
