"""Teams: everyone in an organization sees them; only org admins change them.

``create_team`` and the owner changes are the unchecked operations (CLI, demo,
tests); the ``*_as`` and actor-taking ones check the HTTP caller first.

A team's default allocation feeds the allocation of its members without an
override, so changing or deleting a team re-applies their current periods at once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts import repository as repo
from tokendesk.accounts.actor import Actor
from tokendesk.accounts.lookups import get_team_in_org
from tokendesk.accounts.models import Role, Team, TeamOwner, User
from tokendesk.accounts.schemas import TeamIn, TeamUpdate
from tokendesk.accounts.service import require_org_admin
from tokendesk.audit import service as audit
from tokendesk.db import utcnow
from tokendesk.errors import Conflict, InvalidInput, NotFound
from tokendesk.events.bus import access_changed
from tokendesk.ledger import service as ledger


def _duplicate(name: str) -> Conflict:
    return Conflict(f"name: a team named {name!r} already exists", field="name")


async def create_team(
    session: AsyncSession,
    *,
    organization_id: int,
    name: str,
    default_allocation: int | None = None,
    actor_id: int | None = None,
) -> Team:
    if await repo.team_name_taken(session, organization_id=organization_id, name=name):
        raise _duplicate(name)
    team = Team(
        organization_id=organization_id,
        name=name,
        default_allocation=default_allocation,
        created_at=utcnow(),
    )
    session.add(team)
    await session.flush()
    await audit.record(
        session,
        organization_id=organization_id,
        actor_id=actor_id,
        action="team.created",
        target_type="team",
        target_id=team.id,
        details={"name": name, "default_allocation": default_allocation},
    )
    return team


async def create_team_as(session: AsyncSession, *, actor: Actor, data: TeamIn) -> repo.TeamRow:
    require_org_admin(actor)
    try:
        team = await create_team(
            session,
            organization_id=actor.organization_id,
            **data.model_dump(),
            actor_id=actor.user_id,
        )
    except IntegrityError:
        # Lost a race with a concurrent create of the same name.
        raise _duplicate(data.name) from None
    return await team_row(session, organization_id=actor.organization_id, team_id=team.id)


async def list_teams(session: AsyncSession, *, actor: Actor) -> list[repo.TeamRow]:
    return await repo.team_rows(session, organization_id=actor.organization_id)


async def team_row(session: AsyncSession, *, organization_id: int, team_id: int) -> repo.TeamRow:
    rows = await repo.team_rows(session, organization_id=organization_id, team_id=team_id)
    if not rows:
        raise NotFound(f"team {team_id} not found")
    return rows[0]


async def get_team(session: AsyncSession, *, actor: Actor, team_id: int) -> repo.TeamRow:
    return await team_row(session, organization_id=actor.organization_id, team_id=team_id)


async def _validated_owners(
    session: AsyncSession, *, organization_id: int, owner_ids: list[int]
) -> dict[int, User]:
    wanted = set(owner_ids)
    found = {
        user.id: user
        for user in await repo.users_in_org(
            session, organization_id=organization_id, user_ids=wanted
        )
    }
    missing = sorted(wanted - found.keys())
    if missing:
        listed = ", ".join(str(i) for i in missing)
        raise InvalidInput(f"owner_ids: no user {listed} in this organization", field="owner_ids")
    return found


async def _owners_changed(
    session: AsyncSession, *, team: Team, user: User, actor_id: int | None, action: str
) -> None:
    """Write an owner added or removed, make the user's open event streams check their
    access again, and audit it."""
    await session.flush()
    access_changed(session, user.id)
    await audit.record(
        session,
        organization_id=team.organization_id,
        actor_id=actor_id,
        action=action,
        target_type="team",
        target_id=team.id,
        details={"user_id": user.id, "email": user.email},
    )


async def add_team_owner(
    session: AsyncSession, *, team: Team, user: User, actor_id: int | None = None
) -> None:
    if user.organization_id != team.organization_id:
        raise InvalidInput("owner: the user belongs to another organization", field="owner")
    existing = await session.get(TeamOwner, (team.id, user.id))
    if existing is not None:
        return
    session.add(TeamOwner(team_id=team.id, user_id=user.id))
    # Owning a team makes a plain member a team owner; admins keep their higher role.
    if user.role == Role.MEMBER:
        user.role = Role.TEAM_OWNER.value
    await _owners_changed(
        session, team=team, user=user, actor_id=actor_id, action="team.owner_added"
    )


async def remove_team_owner(
    session: AsyncSession, *, team: Team, user: User, actor_id: int | None = None
) -> None:
    existing = await session.get(TeamOwner, (team.id, user.id))
    if existing is None:
        return
    await session.delete(existing)
    await _owners_changed(
        session, team=team, user=user, actor_id=actor_id, action="team.owner_removed"
    )


async def update_team(
    session: AsyncSession, *, actor: Actor, team_id: int, data: TeamUpdate
) -> repo.TeamRow:
    """Rename, change the default allocation, or replace the set of owners.

    Everything is validated before anything is written. New owners who were plain
    members become team owners; removed owners who own no other team become members.
    """
    team = await get_team_in_org(session, organization_id=actor.organization_id, team_id=team_id)
    require_org_admin(actor)
    fields = data.model_fields_set
    org_id, tid = team.organization_id, team.id
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}

    if "name" in fields and data.name is not None and data.name != team.name:
        if await repo.team_name_taken(
            session, organization_id=org_id, name=data.name, except_id=tid
        ):
            raise _duplicate(data.name)
        before["name"], after["name"] = team.name, data.name
    if "default_allocation" in fields and data.default_allocation != team.default_allocation:
        before["default_allocation"] = team.default_allocation
        after["default_allocation"] = data.default_allocation
    owners: dict[int, User] = {}
    current_owners: set[int] = set()
    if "owner_ids" in fields and data.owner_ids is not None:
        owners = await _validated_owners(session, organization_id=org_id, owner_ids=data.owner_ids)
        current_owners = set(await repo.team_owner_ids(session, team_id=tid))
        if owners.keys() != current_owners:
            before["owner_ids"] = sorted(current_owners)
            after["owner_ids"] = sorted(owners)
    if not after:
        return await team_row(session, organization_id=org_id, team_id=tid)

    if "name" in after:
        team.name = after["name"]
    if "default_allocation" in after:
        team.default_allocation = after["default_allocation"]
    try:
        await session.flush()
    except IntegrityError:
        raise _duplicate(after["name"]) from None
    if "owner_ids" in after:
        for user_id in sorted(owners.keys() - current_owners):
            await add_team_owner(session, team=team, user=owners[user_id], actor_id=actor.user_id)
        removed = current_owners - owners.keys()
        for user_id in sorted(removed):
            user = await session.get(User, user_id)
            if user is not None:
                await remove_team_owner(session, team=team, user=user, actor_id=actor.user_id)
        await repo.demote_idle_owners(session, user_ids=removed)
    await audit.record(
        session,
        organization_id=org_id,
        actor_id=actor.user_id,
        action="team.updated",
        target_type="team",
        target_id=tid,
        details={"before": before, "after": after},
    )
    if "default_allocation" in after:
        await ledger.reapply_allocations(
            session,
            organization_id=org_id,
            user_ids=await repo.team_member_ids(session, team_id=tid),
            actor_id=actor.user_id,
            reason="team default changed",
        )
    return await team_row(session, organization_id=org_id, team_id=tid)


async def delete_team(session: AsyncSession, *, actor: Actor, team_id: int) -> None:
    """Delete a team; its members become team-less and fall back to the org default."""
    team = await get_team_in_org(session, organization_id=actor.organization_id, team_id=team_id)
    require_org_admin(actor)
    org_id, tid, name = team.organization_id, team.id, team.name
    owner_ids = await repo.team_owner_ids(session, team_id=tid)
    member_ids = await repo.detach_team_members(session, team_id=tid)
    provision_team = await repo.forget_provision_team(session, team_id=tid)
    await session.execute(delete(TeamOwner).where(TeamOwner.team_id == tid))
    await session.execute(delete(Team).where(Team.id == tid))
    session.expunge(team)
    demoted = await repo.demote_idle_owners(session, user_ids=owner_ids)
    access_changed(session, *owner_ids, *member_ids)
    await audit.record(
        session,
        organization_id=org_id,
        actor_id=actor.user_id,
        action="team.deleted",
        target_type="team",
        target_id=tid,
        details={
            "name": name,
            "members": member_ids,
            "owners": owner_ids,
            "demoted": demoted,
            # Provisioned people joined it: from now on they join no team.
            "provision_team_cleared": provision_team,
        },
    )
    await ledger.reapply_allocations(
        session,
        organization_id=org_id,
        user_ids=member_ids,
        actor_id=actor.user_id,
        reason=f"team {name!r} deleted",
    )
