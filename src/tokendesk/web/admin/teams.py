"""Teams: list, create, rename, default allocation, owners, who hears of new requests,
members, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts import teams as teams_service
from tokendesk.accounts import users as users_service
from tokendesk.accounts.actor import Actor
from tokendesk.accounts.schemas import TeamIn, TeamUpdate, UserUpdate
from tokendesk.bounds import parse_id
from tokendesk.deps import DbSession, ReadSession
from tokendesk.errors import AppError
from tokendesk.notifications import team_approvers
from tokendesk.notifications.schemas import TeamApproversIn
from tokendesk.web.admin.common import (
    AdminPageActor,
    AdminPageReader,
    AdminRoute,
    TeamPathId,
    UserPathId,
    admin_render,
    optional_int,
    org_timezone,
    query_string,
    with_events,
)
from tokendesk.web.admin.forms import FormError, build, errors_of, number
from tokendesk.web.pages import render

router = APIRouter(route_class=AdminRoute, include_in_schema=False)

# The service's largest page; enough for any owner picker or member list on one screen.
MEMBERS_LIMIT = 500

Q = Annotated[str | None, Query()]


async def _list_context(session: AsyncSession, actor: Actor) -> dict[str, Any]:
    return {"rows": await teams_service.list_teams(session, actor=actor)}


@router.get("/admin/teams", response_class=HTMLResponse)
async def teams_page(
    request: Request, session: ReadSession, actor: AdminPageReader, deleted: Q = None
) -> HTMLResponse:
    return await admin_render(
        request,
        session,
        actor,
        "admin/teams/list.html",
        section="teams",
        page_title="Teams",
        deleted=deleted,
        create_errors={},
        create_values={},
        **await _list_context(session, actor),
    )


@router.post("/admin/teams", response_model=None)
async def create_team(
    request: Request,
    session: DbSession,
    actor: AdminPageActor,
    name: Annotated[str, Form()] = "",
    default_allocation: Annotated[str, Form()] = "",
) -> Response:
    values = {"name": name, "default_allocation": default_allocation}
    try:
        data = build(TeamIn, {"name": name, "default_allocation": number(default_allocation)})
        async with session.begin_nested():
            row = await teams_service.create_team_as(session, actor=actor, data=data)
    except (AppError, FormError) as exc:
        return render(
            request,
            "admin/teams/_list.html",
            status_code=exc.status_code if isinstance(exc, AppError) else 422,
            create_errors=errors_of(exc),
            create_values=values,
            **await _list_context(session, actor),
        )
    return with_events(
        render(
            request,
            "admin/teams/_list.html",
            create_errors={},
            create_values={},
            **await _list_context(session, actor),
        ),
        toast=(f"Created team {row.team.name}.", "ok"),
    )


# ------------------------------------------------------------------ one team


async def _detail_context(session: AsyncSession, actor: Actor, team_id: int) -> dict[str, Any]:
    row = await teams_service.get_team(session, actor=actor, team_id=team_id)
    members: list[Any] = []
    everyone: list[Any] = []
    if actor.can_manage_team(team_id):
        members, _ = await users_service.list_users(
            session, actor=actor, team_id=team_id, limit=MEMBERS_LIMIT
        )
        everyone, _ = await users_service.list_users(session, actor=actor, limit=MEMBERS_LIMIT)
    candidates: list[tuple[int, str, str]] = []
    if actor.is_org_admin:
        candidates = [(r.user.id, r.user.name, r.user.email) for r in everyone if r.user.is_active]
    hearing = (
        await team_approvers.read(session, actor=actor, team_id=team_id)
        if actor.is_org_admin
        else None
    )
    return {
        "row": row,
        "team": row.team,
        "approvers": hearing,
        "approver_errors": {},
        "owner_ids": {user_id for user_id, _ in row.owners},
        "members": members,
        "others": [r for r in everyone if r.user.team_id != team_id],
        "candidates": candidates,
        "can_edit": actor.is_org_admin,
        "can_manage_members": actor.can_manage_team(team_id),
        "edit_errors": {},
        "edit_values": {},
        "member_errors": {},
    }


@router.get("/admin/teams/{team_id}", response_class=HTMLResponse)
async def team_page(
    request: Request, session: ReadSession, actor: AdminPageReader, team_id: TeamPathId
) -> HTMLResponse:
    context = await _detail_context(session, actor, team_id)
    return await admin_render(
        request,
        session,
        actor,
        "admin/teams/detail.html",
        section="teams",
        page_title=context["team"].name,
        **context,
    )


async def _fragment(
    request: Request,
    session: AsyncSession,
    actor: Actor,
    team_id: int,
    *,
    status_code: int = 200,
    **overrides: Any,
) -> HTMLResponse:
    context = await _detail_context(session, actor, team_id)
    context.update(overrides)
    return render(
        request,
        "admin/teams/_detail.html",
        status_code=status_code,
        tz=await org_timezone(session, actor),
        **context,
    )


async def _refused(
    request: Request,
    session: AsyncSession,
    actor: Actor,
    team_id: int,
    exc: AppError | FormError,
    **overrides: Any,
) -> HTMLResponse:
    """The team's page again, with what the refusal says in ``overrides``."""
    status_code = exc.status_code if isinstance(exc, AppError) else 422
    return await _fragment(request, session, actor, team_id, status_code=status_code, **overrides)


@router.post("/admin/teams/{team_id}", response_model=None)
async def update_team(
    request: Request,
    session: DbSession,
    actor: AdminPageActor,
    team_id: TeamPathId,
    name: Annotated[str, Form()] = "",
    default_allocation: Annotated[str, Form()] = "",
    owner_ids: Annotated[list[str] | None, Form()] = None,
) -> Response:
    owners = [number for number in map(parse_id, owner_ids or []) if number is not None]
    values = {"name": name, "default_allocation": default_allocation, "owner_ids": set(owners)}
    try:
        data = build(
            TeamUpdate,
            {
                "name": name,
                "default_allocation": number(default_allocation),
                "owner_ids": owners,
            },
        )
        async with session.begin_nested():
            row = await teams_service.update_team(session, actor=actor, team_id=team_id, data=data)
    except (AppError, FormError) as exc:
        return await _refused(
            request, session, actor, team_id, exc, edit_errors=errors_of(exc), edit_values=values
        )
    return with_events(
        await _fragment(request, session, actor, team_id),
        toast=(f"Saved team {row.team.name}.", "ok"),
    )


@router.post("/admin/teams/{team_id}/approvers", response_model=None)
async def update_approvers(
    request: Request,
    session: DbSession,
    actor: AdminPageActor,
    team_id: TeamPathId,
    approver_ids: Annotated[list[str] | None, Form()] = None,
) -> Response:
    chosen = [n for n in map(parse_id, approver_ids or []) if n is not None]
    try:
        data = build(TeamApproversIn, {"user_ids": chosen})
        async with session.begin_nested():
            await team_approvers.update(session, actor=actor, team_id=team_id, data=data)
    except (AppError, FormError) as exc:
        # Each person's error names their place in the list; the form shows one message.
        errors = {"user_ids": "; ".join(errors_of(exc).values())}
        return await _refused(request, session, actor, team_id, exc, approver_errors=errors)
    return with_events(
        await _fragment(request, session, actor, team_id),
        toast=("Saved who hears of the team's new requests.", "ok"),
    )


async def _move(
    request: Request,
    session: AsyncSession,
    actor: Actor,
    team_id: int,
    *,
    user_id: int | None,
    to_team: int | None,
    done: str,
) -> Response:
    if user_id is None:
        return await _fragment(
            request,
            session,
            actor,
            team_id,
            status_code=422,
            member_errors={"user_id": "choose a person"},
        )
    try:
        async with session.begin_nested():
            row = await users_service.update_user(
                session, actor=actor, user_id=user_id, data=UserUpdate(team_id=to_team)
            )
    except AppError as exc:
        errors = errors_of(exc)
        message = "; ".join(f"{k}: {v}" if k else v for k, v in errors.items())
        return await _refused(
            request, session, actor, team_id, exc, member_errors={"user_id": message}
        )
    return with_events(
        await _fragment(request, session, actor, team_id),
        toast=(done.format(name=row.user.name), "ok"),
    )


@router.post("/admin/teams/{team_id}/members", response_model=None)
async def add_member(
    request: Request,
    session: DbSession,
    actor: AdminPageActor,
    team_id: TeamPathId,
    user_id: Annotated[str, Form()] = "",
) -> Response:
    return await _move(
        request,
        session,
        actor,
        team_id,
        user_id=optional_int(user_id),
        to_team=team_id,
        done="Added {name} to the team.",
    )


@router.post("/admin/teams/{team_id}/members/{user_id}/remove", response_model=None)
async def remove_member(
    request: Request,
    session: DbSession,
    actor: AdminPageActor,
    team_id: TeamPathId,
    user_id: UserPathId,
) -> Response:
    return await _move(
        request,
        session,
        actor,
        team_id,
        user_id=user_id,
        to_team=None,
        done="Removed {name} from the team.",
    )


@router.post("/admin/teams/{team_id}/delete", response_model=None)
async def delete_team(
    request: Request, session: DbSession, actor: AdminPageActor, team_id: TeamPathId
) -> Response:
    row = await teams_service.get_team(session, actor=actor, team_id=team_id)
    name = row.team.name
    try:
        async with session.begin_nested():
            await teams_service.delete_team(session, actor=actor, team_id=team_id)
    except AppError as exc:
        return await _refused(request, session, actor, team_id, exc, edit_errors={"": exc.message})
    response = Response(status_code=200)
    response.headers["HX-Redirect"] = "/admin/teams?" + query_string(deleted=name)
    return response
