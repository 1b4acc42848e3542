"""Auto-approve rules REST API: HTTP only; the rules live in ``rule_admin``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Response, status

from tokendesk.bounds import QueryId, path_id
from tokendesk.deps import CurrentActor, CurrentReader, DbSession, ReadSession
from tokendesk.token_requests import rule_admin, top_ups
from tokendesk.token_requests.schemas import (
    RuleIn,
    RuleList,
    RuleOrderIn,
    RuleOut,
    RulePreview,
    RuleUpdate,
    TopUpIn,
    TopUpOut,
)

router = APIRouter(prefix="/approval-rules", tags=["approval rules"])

RuleId = Annotated[int, path_id("rule")]


@router.get("", summary="Auto-approve rules, in the order they are tried")
async def list_rules(
    session: ReadSession,
    actor: CurrentReader,
    team_id: QueryId | None = None,
) -> RuleList:
    return await rule_admin.list_rules(session, actor=actor, team_id=team_id)


@router.post("", status_code=201, summary="Add a rule at the end of its list")
async def create_rule(body: RuleIn, session: DbSession, actor: CurrentActor) -> RuleOut:
    return await rule_admin.create_rule(session, actor=actor, values=body.model_dump())


@router.post("/preview", summary="What a rule would have approved last period")
async def preview_rule(body: RuleIn, session: ReadSession, actor: CurrentReader) -> RulePreview:
    return await rule_admin.preview(session, actor=actor, values=body.model_dump())


@router.put("/order", summary="Reorder one list of rules")
async def reorder_rules(body: RuleOrderIn, session: DbSession, actor: CurrentActor) -> RuleList:
    return await rule_admin.reorder(session, actor=actor, team_id=body.team_id, ids=body.ids)


@router.get("/top-up", summary="The organization's auto top-up (off by default)")
async def get_top_up(session: ReadSession, actor: CurrentReader) -> TopUpOut:
    return await top_ups.get_top_up(session, actor=actor)


@router.put("/top-up", summary="Set the organization's auto top-up (org admins)")
async def set_top_up(body: TopUpIn, session: DbSession, actor: CurrentActor) -> TopUpOut:
    return await top_ups.set_top_up(session, actor=actor, values=body.model_dump())


@router.get("/{rule_id}", summary="One rule")
async def get_rule(rule_id: RuleId, session: ReadSession, actor: CurrentReader) -> RuleOut:
    return await rule_admin.get_rule(session, actor=actor, rule_id=rule_id)


@router.patch("/{rule_id}", summary="Change a rule; a limit set to null stops limiting")
async def update_rule(
    rule_id: RuleId, body: RuleUpdate, session: DbSession, actor: CurrentActor
) -> RuleOut:
    changes = body.model_dump(exclude_unset=True)
    return await rule_admin.update_rule(session, actor=actor, rule_id=rule_id, changes=changes)


@router.delete("/{rule_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a rule")
async def delete_rule(rule_id: RuleId, session: DbSession, actor: CurrentActor) -> Response:
    await rule_admin.delete_rule(session, actor=actor, rule_id=rule_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
