"""Organizations, teams, users and API keys: creation, allocation and scope rules.

The administration built on these lives beside it, one module per object:
``users``, ``teams``, ``organizations`` and ``api_keys``.
Services flush, never commit: the caller's unit of work owns the transaction.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.actor import Actor
from tokendesk.accounts.models import ApiKey, Organization, Role, Team, TeamOwner, User
from tokendesk.accounts.security import hash_api_key, hash_password, new_api_key
from tokendesk.audit import service as audit
from tokendesk.db import utcnow
from tokendesk.errors import Conflict, Forbidden, InvalidInput, NotFound
from tokendesk.events.bus import access_changed
from tokendesk.ledger import service as ledger
from tokendesk.ledger.periods import is_valid_timezone


def _check_timezone(name: str) -> None:
    if not is_valid_timezone(name):
        raise InvalidInput(f"timezone: unknown IANA time zone {name!r}", field="timezone")


async def create_organization(
    session: AsyncSession,
    *,
    name: str,
    default_allocation: int = 100_000,
    reset_day: int = 1,
    timezone: str = "UTC",
    max_request: int = 1_000_000,
    pool: int | None = None,
    low_balance_percent: int = 20,
    carry_over_debt: bool = True,
    actor_id: int | None = None,
) -> Organization:
    _check_timezone(timezone)
    if not 1 <= reset_day <= 28:
        raise InvalidInput("reset_day: must be between 1 and 28", field="reset_day")
    if await session.scalar(select(Organization.id).where(Organization.name == name)):
        raise Conflict(f"name: an organization named {name!r} already exists", field="name")
    org = Organization(
        name=name,
        default_allocation=default_allocation,
        reset_day=reset_day,
        timezone=timezone,
        max_request=max_request,
        pool=pool,
        low_balance_percent=low_balance_percent,
        carry_over_debt=carry_over_debt,
        created_at=utcnow(),
    )
    session.add(org)
    await session.flush()
    await audit.record(
        session,
        organization_id=org.id,
        actor_id=actor_id,
        action="organization.created",
        target_type="organization",
        target_id=org.id,
        details={"name": name},
    )
    return org


async def get_organization(session: AsyncSession, organization_id: int) -> Organization:
    org = await session.get(Organization, organization_id)
    if org is None:
        raise NotFound(f"organization {organization_id} not found")
    return org


async def organization_by_name(session: AsyncSession, name: str) -> Organization:
    org = await session.scalar(select(Organization).where(Organization.name == name))
    if org is None:
        raise NotFound(f"organization {name!r} not found")
    return org


async def team_by_name(session: AsyncSession, *, organization_id: int, name: str) -> Team:
    team = await session.scalar(
        select(Team).where(Team.organization_id == organization_id, Team.name == name)
    )
    if team is None:
        raise NotFound(f"team {name!r} not found")
    return team


async def user_by_email(session: AsyncSession, email: str) -> User:
    user = await session.scalar(select(User).where(func.lower(User.email) == email.lower()))
    if user is None:
        raise NotFound(f"user {email!r} not found")
    return user


async def create_team(
    session: AsyncSession,
    *,
    organization_id: int,
    name: str,
    default_allocation: int | None = None,
    actor_id: int | None = None,
) -> Team:
    exists = await session.scalar(
        select(Team.id).where(Team.organization_id == organization_id, Team.name == name)
    )
    if exists:
        raise Conflict(f"name: a team named {name!r} already exists", field="name")
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
    await session.flush()
    access_changed(session, user.id)
    await audit.record(
        session,
        organization_id=team.organization_id,
        actor_id=actor_id,
        action="team.owner_added",
        target_type="team",
        target_id=team.id,
        details={"user_id": user.id, "email": user.email},
    )


async def remove_team_owner(
    session: AsyncSession, *, team: Team, user: User, actor_id: int | None = None
) -> None:
    existing = await session.get(TeamOwner, (team.id, user.id))
    if existing is None:
        return
    await session.delete(existing)
    await session.flush()
    access_changed(session, user.id)
    await audit.record(
        session,
        organization_id=team.organization_id,
        actor_id=actor_id,
        action="team.owner_removed",
        target_type="team",
        target_id=team.id,
        details={"user_id": user.id, "email": user.email},
    )


async def create_user(
    session: AsyncSession,
    *,
    organization_id: int,
    email: str,
    name: str,
    role: Role = Role.MEMBER,
    team_id: int | None = None,
    allocation_override: int | None = None,
    password: str | None = None,
    actor_id: int | None = None,
    now: datetime | None = None,
) -> User:
    """Create a user and open their current period with the full allocation."""
    org = await get_organization(session, organization_id)
    team = None
    if team_id is not None:
        team = await session.get(Team, team_id)
        if team is None or team.organization_id != organization_id:
            raise InvalidInput(f"team_id: team {team_id} not found", field="team_id")
    email = email.strip().lower()
    if await session.scalar(select(User.id).where(func.lower(User.email) == email)):
        raise Conflict(f"email: a user with email {email!r} already exists", field="email")
    user = User(
        organization_id=organization_id,
        email=email,
        name=name.strip(),
        role=Role(role).value,
        team_id=team_id,
        allocation_override=allocation_override,
        is_active=True,
        password_hash=await hash_password(password) if password else None,
        created_at=utcnow(),
    )
    session.add(user)
    try:
        await session.flush()
    except IntegrityError:
        raise Conflict(
            f"email: a user with email {email!r} already exists", field="email"
        ) from None
    await ledger.open_balance(session, user=user, org=org, team=team, actor_id=actor_id, now=now)
    await audit.record(
        session,
        organization_id=organization_id,
        actor_id=actor_id,
        action="user.created",
        target_type="user",
        target_id=user.id,
        details={"email": email, "role": user.role, "team_id": team_id},
    )
    return user


async def issue_api_key(
    session: AsyncSession, *, user: User, name: str = "default", actor_id: int | None = None
) -> tuple[ApiKey, str]:
    """Create a key; the plain key is returned once and never stored."""
    key = new_api_key()
    api_key = ApiKey(
        user_id=user.id,
        name=name,
        prefix=key[:10],
        key_hash=hash_api_key(key),
        created_at=utcnow(),
    )
    session.add(api_key)
    await session.flush()
    await audit.record(
        session,
        organization_id=user.organization_id,
        actor_id=actor_id if actor_id is not None else user.id,
        action="api_key.created",
        target_type="api_key",
        target_id=api_key.id,
        details={"user_id": user.id, "name": name},
    )
    return api_key, key


def can_manage_user(actor: Actor, user: User) -> bool:
    """Org admins manage everyone in their org; team owners the members of their teams."""
    if actor.is_super_admin:
        return user.organization_id == actor.organization_id
    if user.organization_id != actor.organization_id:
        return False
    if actor.is_org_admin:
        return True
    return actor.role == Role.TEAM_OWNER and actor.can_manage_team(user.team_id)


async def get_user_in_scope(session: AsyncSession, *, actor: Actor, user_id: int) -> User:
    user = await session.get(User, user_id)
    if user is None or not (user.id == actor.user_id or can_manage_user(actor, user)):
        raise NotFound(f"user {user_id} not found")
    return user


def require_manager(actor: Actor, user: User) -> None:
    if not can_manage_user(actor, user):
        raise Forbidden("you may not manage this user")


def require_org_admin(actor: Actor) -> None:
    if not actor.is_org_admin:
        raise Forbidden("this needs an org admin or super admin")


def require_super_admin(actor: Actor) -> None:
    if not actor.is_super_admin:
        raise Forbidden("this needs a super admin")


def require_outranks(actor: Actor, user: User) -> None:
    """Team owners manage members of their teams, never an admin who happens to be in one;
    only a super admin touches a super admin."""
    if user.id == actor.user_id:
        return
    if user.role == Role.SUPER_ADMIN and not actor.is_super_admin:
        raise Forbidden("only a super admin may manage a super admin")
    if not actor.is_org_admin and user.role == Role.ORG_ADMIN:
        raise Forbidden("only an org admin may manage an org admin")


async def get_team_in_org(session: AsyncSession, *, organization_id: int, team_id: int) -> Team:
    team = await session.get(Team, team_id)
    if team is None or team.organization_id != organization_id:
        raise NotFound(f"team {team_id} not found")
    return team
