"""Auto-approve rules on the Settings page: each list in the order it is tried, a
rule added, changed, switched on or off, moved and deleted, and the editor's live
preview of what the rule would have done last period.

Org admins change the organization's list and every team's; a team owner changes
their teams' lists and sees the organization's. The scoping is ``rule_admin``'s,
the same the REST API applies; this module only turns forms into its calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts import teams as teams_service
from tokendesk.accounts.actor import Actor
from tokendesk.bounds import path_id
from tokendesk.deps import DbSession, ReadSession
from tokendesk.errors import AppError, InvalidInput
from tokendesk.token_requests import rule_admin
from tokendesk.token_requests.schemas import RuleOut
from tokendesk.web.admin.common import (
    AdminPageActor,
    AdminPageReader,
    AdminRoute,
    org_timezone,
    with_events,
)
from tokendesk.web.admin.forms import errors_of, number
from tokendesk.web.pages import render

router = APIRouter(route_class=AdminRoute, include_in_schema=False)

RulePathId = Annotated[int, path_id("rule")]
FRAGMENT = "admin/rules/_rules.html"
EDITOR = "admin/rules/_editor.html"
PREVIEW = "admin/rules/_preview.html"
LIMITS = rule_admin.LIMITS
# The editor's labels, naming a field in the preview's message.
LABELS = {
    "team_id": "The list",
    "max_amount": "Requests of at most",
    "max_count": "Approvals per person",
    "max_tokens": "Tokens per person",
    "pool_floor": "Pool keeps",
}
# A limit's form field takes digits with separators; past this it is not a number.
LIMIT_MAX_LENGTH = 30


@dataclass
class RuleList:
    """One list of rules as the page shows it: the organization's or one team's."""

    key: str
    title: str
    team_id: int | None
    editable: bool
    rules: list[RuleOut] = field(default_factory=list)


@dataclass
class Editor:
    """The rule form: a new rule (``rule`` None) or an existing one, with what was
    typed and what was refused."""

    rule: RuleOut | None
    values: dict[str, Any]
    errors: dict[str, str] = field(default_factory=dict)
    choices: list[tuple[str, str]] = field(default_factory=list)


def _team_key(team_id: int | None) -> str:
    return "" if team_id is None else str(team_id)


async def _lists(session: AsyncSession, actor: Actor) -> list[RuleList]:
    """The lists the caller sees, in the order a request is offered to them: each
    team's, then the organization's."""
    teams = [row.team for row in await teams_service.list_teams(session, actor=actor)]
    lists = [
        RuleList(key=_team_key(team.id), title=f"Team {team.name}", team_id=team.id, editable=True)
        for team in teams
        if actor.can_manage_team(team.id)
    ]
    lists.append(
        RuleList(key="", title="Whole organization", team_id=None, editable=actor.is_org_admin)
    )
    by_key = {item.key: item for item in lists}
    for rule in (await rule_admin.list_rules(session, actor=actor)).items:
        found = by_key.get(_team_key(None if rule.team is None else rule.team.id))
        if found is not None:
            found.rules.append(rule)
    for item in lists:
        item.rules.sort(key=lambda rule: (rule.position, rule.id))
    return lists


def _values_of(rule: RuleOut | None, lists: list[RuleList]) -> dict[str, Any]:
    if rule is None:
        first = next((item for item in lists if item.editable), None)
        return {"name": "", "team_id": "" if first is None else first.key, "enabled": True}
    values: dict[str, Any] = {key: getattr(rule, key) for key in LIMITS}
    values.update(
        name=rule.name,
        team_id=_team_key(None if rule.team is None else rule.team.id),
        enabled=rule.enabled,
    )
    return values


async def _render(
    request: Request,
    session: AsyncSession,
    actor: Actor,
    *,
    editor: Editor | None = None,
    toast: str | None = None,
    status_code: int = 200,
) -> Response:
    response = render(
        request,
        FRAGMENT,
        status_code=status_code,
        **await rules_context(session, actor, editor=editor),
    )
    return with_events(response, toast=(toast, "ok")) if toast else response


async def rules_context(
    session: AsyncSession, actor: Actor, *, editor: Editor | None = None
) -> dict[str, Any]:
    """What the Settings page's rules section shows."""
    lists = await _lists(session, actor)
    if editor is None:
        editor = Editor(rule=None, values=_values_of(None, lists))
    editor.choices = [(item.key, item.title) for item in lists if item.editable]
    return {"rule_lists": lists, "editor": editor}


def _submitted(typed: dict[str, Any]) -> dict[str, Any]:
    """The form's fields as the service takes them: an empty limit is no limit; a
    limit that is not a number stays text, which the service refuses by name."""
    values: dict[str, Any] = {key: number(typed[key]) for key in LIMITS if key in typed}
    if "name" in typed:
        values["name"] = typed["name"]
    if "enabled" in typed:
        values["enabled"] = typed["enabled"]
    return values


LimitField = Annotated[str, Form(max_length=LIMIT_MAX_LENGTH)]


async def rule_form(
    name: Annotated[str, Form(max_length=400)] = "",
    enabled: Annotated[str | None, Form()] = None,
    max_amount: LimitField = "",
    max_count: LimitField = "",
    max_tokens: LimitField = "",
    pool_floor: LimitField = "",
) -> dict[str, Any]:
    """The editor's fields as typed, kept to show again beside what was refused; an
    unticked box sends nothing."""
    return {
        "name": name,
        "enabled": enabled is not None,
        "max_amount": max_amount,
        "max_count": max_count,
        "max_tokens": max_tokens,
        "pool_floor": pool_floor,
    }


RuleForm = Annotated[dict[str, Any], Depends(rule_form)]


def _team_of(raw: str) -> int | None:
    """The list a new rule goes to: '' is the organization's."""
    if not raw.strip():
        return None
    team_id = number(raw)
    if not isinstance(team_id, int):
        raise InvalidInput("team_id: pick a list for the rule", field="team_id")
    return team_id


@router.get("/admin/rules/new", response_class=HTMLResponse)
async def new_rule_form(request: Request, session: ReadSession, actor: AdminPageReader) -> Response:
    context = await rules_context(session, actor)
    return render(request, EDITOR, **context)


@router.get("/admin/rules/{rule_id}/edit", response_class=HTMLResponse)
async def edit_rule_form(
    request: Request, session: ReadSession, actor: AdminPageReader, rule_id: RulePathId
) -> Response:
    rule = await rule_admin.get_rule(session, actor=actor, rule_id=rule_id)
    lists = await _lists(session, actor)
    editor = Editor(rule=rule, values=_values_of(rule, lists))
    return render(request, EDITOR, **await rules_context(session, actor, editor=editor))


@router.get("/admin/rules/preview", response_class=HTMLResponse)
async def preview_rule(
    request: Request,
    session: ReadSession,
    actor: AdminPageReader,
    team_id: Annotated[str, Query(max_length=30)] = "",
    max_amount: Annotated[str, Query(max_length=LIMIT_MAX_LENGTH)] = "",
    max_count: Annotated[str, Query(max_length=LIMIT_MAX_LENGTH)] = "",
    max_tokens: Annotated[str, Query(max_length=LIMIT_MAX_LENGTH)] = "",
    pool_floor: Annotated[str, Query(max_length=LIMIT_MAX_LENGTH)] = "",
) -> Response:
    """The editor's preview, recomputed as the form changes: it reads, never writes."""
    values = _submitted(
        {
            "max_amount": max_amount,
            "max_count": max_count,
            "max_tokens": max_tokens,
            "pool_floor": pool_floor,
        }
    )
    try:
        values["team_id"] = _team_of(team_id)
        result = await rule_admin.preview(session, actor=actor, values=values)
    except AppError as exc:
        [(name, message)] = errors_of(exc).items()
        error = f"{LABELS.get(name, name)}: {message}" if name else message
        return render(request, PREVIEW, preview=None, error=error)
    return render(
        request,
        PREVIEW,
        preview=result,
        pool_floor=values["pool_floor"],
        # The period ends at the reset: its last day is the one before.
        last=result.period_end - timedelta(microseconds=1),
        tz=await org_timezone(session, actor),
        error=None,
    )


@router.post("/admin/rules", response_model=None)
async def create_rule(
    request: Request,
    session: DbSession,
    actor: AdminPageActor,
    typed: RuleForm,
    team_id: Annotated[str, Form(max_length=30)] = "",
) -> Response:
    typed["team_id"] = team_id
    try:
        values = {**_submitted(typed), "team_id": _team_of(team_id)}
        async with session.begin_nested():
            rule = await rule_admin.create_rule(session, actor=actor, values=values)
    except AppError as exc:
        editor = Editor(rule=None, values=typed, errors=errors_of(exc))
        return await _refused(request, session, actor, editor, exc)
    return await _render(request, session, actor, toast=f"Added rule {rule.name}.")


@router.post("/admin/rules/{rule_id}", response_model=None)
async def update_rule(
    request: Request,
    session: DbSession,
    actor: AdminPageActor,
    rule_id: RulePathId,
    typed: RuleForm,
) -> Response:
    rule = await rule_admin.get_rule(session, actor=actor, rule_id=rule_id)
    typed["team_id"] = _team_key(None if rule.team is None else rule.team.id)
    try:
        async with session.begin_nested():
            saved = await rule_admin.update_rule(
                session, actor=actor, rule_id=rule_id, changes=_submitted(typed)
            )
    except AppError as exc:
        editor = Editor(rule=rule, values=typed, errors=errors_of(exc))
        return await _refused(request, session, actor, editor, exc)
    return await _render(request, session, actor, toast=f"Saved rule {saved.name}.")


async def _refused(
    request: Request, session: AsyncSession, actor: Actor, editor: Editor, exc: AppError
) -> Response:
    """The section again, the editor showing what was typed and why it was refused."""
    return await _render(request, session, actor, editor=editor, status_code=exc.status_code or 422)


@router.post("/admin/rules/{rule_id}/enabled", response_model=None)
async def switch_rule(
    request: Request,
    session: DbSession,
    actor: AdminPageActor,
    rule_id: RulePathId,
    enabled: Annotated[str, Form(max_length=5)] = "",
) -> Response:
    on = enabled == "1"
    saved = await rule_admin.update_rule(
        session, actor=actor, rule_id=rule_id, changes={"enabled": on}
    )
    state = "on" if on else "off"
    return await _render(request, session, actor, toast=f"Rule {saved.name} is {state}.")


@router.post("/admin/rules/{rule_id}/move", response_model=None)
async def move_rule(
    request: Request,
    session: DbSession,
    actor: AdminPageActor,
    rule_id: RulePathId,
    direction: Annotated[str, Form(max_length=5)] = "",
) -> Response:
    """One place earlier (``up``) or later (``down``) in its list; at an end, nothing moves."""
    if direction not in ("up", "down"):
        raise InvalidInput("direction: must be up or down", field="direction")
    rule = await rule_admin.get_rule(session, actor=actor, rule_id=rule_id)
    team_id = None if rule.team is None else rule.team.id
    ids = [
        item.id
        for item in (await rule_admin.list_rules(session, actor=actor)).items
        if (None if item.team is None else item.team.id) == team_id
    ]
    at = ids.index(rule.id)
    to = at - 1 if direction == "up" else at + 1
    if 0 <= to < len(ids):
        ids[at], ids[to] = ids[to], ids[at]
        await rule_admin.reorder(session, actor=actor, team_id=team_id, ids=ids)
    return await _render(request, session, actor, toast=f"Moved rule {rule.name} {direction}.")


@router.post("/admin/rules/{rule_id}/delete", response_model=None)
async def delete_rule(
    request: Request, session: DbSession, actor: AdminPageActor, rule_id: RulePathId
) -> Response:
    rule = await rule_admin.get_rule(session, actor=actor, rule_id=rule_id)
    await rule_admin.delete_rule(session, actor=actor, rule_id=rule_id)
    return await _render(request, session, actor, toast=f"Deleted rule {rule.name}.")
