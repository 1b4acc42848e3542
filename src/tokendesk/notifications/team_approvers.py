"""Who a team's new requests are announced to. A team may name its approvers; with
none named, its owners hear, else the organization's admins (``outbox.approvers``).
Only people who may decide the team's requests can be named (its owners and the org
admins): a notification nobody it reaches can act on would be noise. Org admins set
it, as they set the organization's other channels; every change is audited."""

from __future__ import annotations

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.actor import Actor
from tokendesk.accounts.lookups import get_team_in_org
from tokendesk.accounts.models import User
from tokendesk.accounts.service import require_org_admin
from tokendesk.audit import service as audit
from tokendesk.errors import InvalidInput
from tokendesk.notifications.models import TeamApprover
from tokendesk.notifications.outbox import approvers, may_decide_for
from tokendesk.notifications.schemas import Person, TeamApproversIn, TeamApproversOut


async def _people(session: AsyncSession, ids: list[int]) -> list[Person]:
    if not ids:
        return []
    rows = await session.execute(
        select(User.id, User.name, User.email).where(User.id.in_(ids)).order_by(User.id)
    )
    return [Person(id=i, name=name, email=email) for i, name, email in rows]


async def read(session: AsyncSession, *, actor: Actor, team_id: int) -> TeamApproversOut:
    require_org_admin(actor)
    team = await get_team_in_org(session, organization_id=actor.organization_id, team_id=team_id)
    named = list(
        await session.scalars(
            select(TeamApprover.user_id)
            .where(TeamApprover.team_id == team.id)
            .order_by(TeamApprover.user_id)
        )
    )
    # Who hears of a request now, from someone who is none of them.
    hearing = await approvers(
        session, organization_id=team.organization_id, team_id=team.id, requester_id=0
    )
    eligible = list(
        await session.scalars(
            select(User.id)
            .where(
                User.organization_id == team.organization_id,
                User.is_active.is_(True),
                may_decide_for(team.id),
            )
            .order_by(User.id)
        )
    )
    return TeamApproversOut(
        team_id=team.id,
        user_ids=named,
        notified=await _people(session, hearing),
        eligible=await _people(session, eligible),
    )


async def update(
    session: AsyncSession, *, actor: Actor, team_id: int, data: TeamApproversIn
) -> TeamApproversOut:
    """Name the team's approvers (an empty list: back to its owners, else the admins)."""
    require_org_admin(actor)
    team = await get_team_in_org(session, organization_id=actor.organization_id, team_id=team_id)
    if data.user_ids:
        allowed = set(
            await session.scalars(
                select(User.id).where(
                    User.id.in_(data.user_ids),
                    User.organization_id == team.organization_id,
                    User.is_active.is_(True),
                    may_decide_for(team.id),
                )
            )
        )
        for index, user_id in enumerate(data.user_ids):
            if user_id not in allowed:
                name = f"user_ids.{index}"
                raise InvalidInput(
                    f"{name}: user {user_id} cannot decide team {team.id}'s requests "
                    "(name its owners or the organization's admins)",
                    field=name,
                )
    before = list(
        await session.scalars(select(TeamApprover.user_id).where(TeamApprover.team_id == team.id))
    )
    if sorted(before) != sorted(data.user_ids):
        await session.execute(delete(TeamApprover).where(TeamApprover.team_id == team.id))
        if data.user_ids:
            await session.execute(
                insert(TeamApprover),
                [{"team_id": team.id, "user_id": user_id} for user_id in data.user_ids],
            )
        await audit.record(
            session,
            organization_id=team.organization_id,
            actor_id=actor.user_id,
            action="notifications.team_approvers_changed",
            target_type="team",
            target_id=team.id,
            details={"before": sorted(before), "after": sorted(data.user_ids)},
        )
    return await read(session, actor=actor, team_id=team.id)
