"""Managing people: the caller's own profile, the user directory, edits and adjustments.

``create_user`` is the unchecked operation (CLI, demo, tests); ``create_user_as``
and the other actor-taking services check the HTTP caller first.

Scope: org admins (and super admins in the organization they act in) manage
everyone there; team owners manage the members of the teams they own; everyone
may read their own record and ledger. Out-of-scope users answer 404.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts import adjustments, passwords
from tokendesk.accounts import repository as repo
from tokendesk.accounts.actor import Actor
from tokendesk.accounts.auth import end_every_session
from tokendesk.accounts.emails import BadEmail, normalize_email
from tokendesk.accounts.keycache import credentials_changed
from tokendesk.accounts.lookups import get_organization
from tokendesk.accounts.models import Organization, Role, Team, User
from tokendesk.accounts.passwords import NewPassword
from tokendesk.accounts.schemas import UserIn, UserUpdate
from tokendesk.accounts.security import hash_password
from tokendesk.accounts.service import (
    get_user_in_scope,
    require_manager,
    require_outranks,
)
from tokendesk.accounts.signin import Guesses
from tokendesk.audit import service as audit
from tokendesk.db import Database, utcnow, writes
from tokendesk.errors import Conflict, Forbidden, InvalidInput, NotFound
from tokendesk.events.bus import access_changed
from tokendesk.ledger import service as ledger
from tokendesk.ledger.models import Balance
from tokendesk.token_requests import service as token_requests

# What a person may change about themselves; allocation, team, role and the active
# flag are someone else's call (nobody raises their own budget).
SELF_EDITABLE = frozenset({"name", "password"})
# What a team owner may change about a member of a team they own.
TEAM_OWNER_EDITABLE = frozenset({"allocation_override", "team_id"})


@dataclass(frozen=True)
class Me:
    user: User
    organization: Organization
    team: Team | None
    balance: Balance


async def me(session: AsyncSession, *, actor: Actor, now: datetime | None = None) -> Me:
    """The caller with their current balance (as its rollover will leave it, if its
    period ended: reading it writes nothing)."""
    balance = await ledger.current_balance(session, user_id=actor.user_id, now=now)
    user = await session.get(User, actor.user_id)
    if user is None:
        raise NotFound(f"user {actor.user_id} not found")
    organization = await get_organization(session, user.organization_id)
    team = await session.get(Team, user.team_id) if user.team_id is not None else None
    return Me(user=user, organization=organization, team=team, balance=balance)


def _scope(actor: Actor) -> repo.UserFilter:
    if actor.is_org_admin:
        return repo.UserFilter(organization_id=actor.organization_id)
    if actor.role == Role.TEAM_OWNER:
        return repo.UserFilter(organization_id=actor.organization_id, team_ids=actor.owned_team_ids)
    raise Forbidden("this needs a team owner, org admin or super admin")


async def _page(
    session: AsyncSession, f: repo.UserFilter, *, limit: int, offset: int, now: datetime
) -> tuple[list[repo.UserRow], int]:
    rows, total = await repo.user_page(session, f, limit=limit, offset=offset)
    ended = [row.balance for row in rows if row.balance.period_end <= now]
    if not ended:
        return rows, total
    # Nobody sees a balance from a period that has ended. A write transaction rolls
    # it over; a read shows it as its rollover will leave it, writing nothing.
    if writes(session):
        await ledger.rollover_due(session, now=now, user_ids=[b.user_id for b in ended])
        return await repo.user_page(session, f, limit=limit, offset=offset)
    rolled = await ledger.rolled_over_balances(session, ended, now=now)
    return [replace(row, balance=rolled.get(row.user.id, row.balance)) for row in rows], total


async def list_users(
    session: AsyncSession,
    *,
    actor: Actor,
    q: str | None = None,
    team_id: int | None = None,
    role: Role | None = None,
    active: bool | None = None,
    limit: int = 50,
    offset: int = 0,
    now: datetime | None = None,
) -> tuple[list[repo.UserRow], int]:
    scope = _scope(actor)
    f = repo.UserFilter(
        organization_id=scope.organization_id,
        team_ids=scope.team_ids,
        q=q,
        team_id=team_id,
        role=role,
        active=active,
    )
    return await _page(session, f, limit=limit, offset=offset, now=now or utcnow())


async def user_row(
    session: AsyncSession, *, user_id: int, organization_id: int, now: datetime | None = None
) -> repo.UserRow:
    f = repo.UserFilter(organization_id=organization_id, user_ids=[user_id])
    rows, _ = await _page(session, f, limit=1, offset=0, now=now or utcnow())
    if not rows:
        raise NotFound(f"user {user_id} not found")
    return rows[0]


async def get_user(session: AsyncSession, *, actor: Actor, user_id: int) -> repo.UserRow:
    user = await get_user_in_scope(session, actor=actor, user_id=user_id)
    return await user_row(session, user_id=user.id, organization_id=user.organization_id)


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
    try:
        email = normalize_email(email)
    except BadEmail as exc:
        raise InvalidInput(f"email: {exc}", field="email") from None
    if await session.scalar(select(User.id).where(User.email == email)):
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


async def create_user_as(session: AsyncSession, *, actor: Actor, data: UserIn) -> repo.UserRow:
    """Org admins create anyone but super admins; team owners create plain members,
    and only into a team they own, so the new person lands inside their scope."""
    if data.role == Role.SUPER_ADMIN and not actor.is_super_admin:
        raise Forbidden("role: only a super admin may create a super admin")
    if not actor.is_org_admin:
        if actor.role != Role.TEAM_OWNER:
            raise Forbidden("this needs a team owner, org admin or super admin")
        if data.role != Role.MEMBER:
            raise Forbidden("role: team owners may only create members")
        if not actor.can_manage_team(data.team_id):
            raise Forbidden("team_id: team owners may only add members to a team they own")
    if data.allocation_override is not None:
        await adjustments.check_new_override(
            session,
            organization_id=actor.organization_id,
            override=data.allocation_override,
            team_id=data.team_id,
        )
    user = await create_user(
        session,
        organization_id=actor.organization_id,
        email=str(data.email),
        name=data.name,
        role=data.role,
        team_id=data.team_id,
        allocation_override=data.allocation_override,
        password=data.password,
        actor_id=actor.user_id,
    )
    return await user_row(session, user_id=user.id, organization_id=actor.organization_id)


async def prepare_password(
    database: Database,
    *,
    actor: Actor,
    user_id: int,
    data: UserUpdate,
    guesses: Guesses,
    address: str,
) -> NewPassword | None:
    """Check and hash the password ``data`` sets, outside any transaction; None when it
    sets none. Hand the result to :func:`update_user`."""
    if "password" not in data.model_fields_set:
        return None
    async with database.transaction(write=False) as reading:
        user = await get_user_in_scope(reading, actor=actor, user_id=user_id)
        _check_update_allowed(actor, user, data, set(data.model_fields_set))
    replaces = None
    if user.id == actor.user_id:
        await passwords.check_own_password_change(
            actor, user, data, guesses=guesses, address=address
        )
        replaces = user.password_hash
    if data.password is None:
        return None
    return NewPassword(
        user_id=user.id, password_hash=await hash_password(data.password), replaces=replaces
    )


def _check_update_allowed(actor: Actor, user: User, data: UserUpdate, fields: set[str]) -> None:
    if "current_password" in fields and (user.id != actor.user_id or "password" not in fields):
        raise InvalidInput(
            "current_password: only sent with a new password for yourself",
            field="current_password",
        )
    fields = fields - {"current_password"}
    if user.id == actor.user_id:
        if fields - SELF_EDITABLE:
            names = ", ".join(sorted(fields - SELF_EDITABLE))
            raise Forbidden(f"{names}: you may not change this about yourself")
        return
    require_manager(actor, user)
    require_outranks(actor, user)
    if not actor.is_org_admin:
        if fields - TEAM_OWNER_EDITABLE:
            names = ", ".join(sorted(fields - TEAM_OWNER_EDITABLE))
            raise Forbidden(f"{names}: only an org admin may change this")
        if "team_id" in fields and not actor.can_manage_team(data.team_id):
            raise Forbidden("team_id: team owners may only move members between teams they own")
    if data.role == Role.SUPER_ADMIN and not actor.is_super_admin:
        raise Forbidden("role: only a super admin may grant super_admin")


async def update_user(
    session: AsyncSession,
    *,
    actor: Actor,
    user_id: int,
    data: UserUpdate,
    new_password: NewPassword | None = None,
) -> repo.UserRow:
    """Apply the fields present in ``data``; allocation-related changes take effect at once.
    A password in ``data`` is written from ``new_password`` (see :func:`prepare_password`)."""
    user = await get_user_in_scope(session, actor=actor, user_id=user_id)
    fields = set(data.model_fields_set)
    _check_update_allowed(actor, user, data, fields)
    if data.password is not None and (new_password is None or new_password.user_id != user.id):
        raise ValueError("a new password is checked and hashed first, by prepare_password")
    new_team = await session.get(Team, user.team_id) if user.team_id is not None else None
    if "team_id" in fields:
        new_team = await session.get(Team, data.team_id) if data.team_id is not None else None
        if data.team_id is not None and (
            new_team is None or new_team.organization_id != user.organization_id
        ):
            raise InvalidInput(f"team_id: team {data.team_id} not found", field="team_id")
    if "allocation_override" in fields and data.allocation_override != user.allocation_override:
        await adjustments.check_override_raise(
            session, user=user, override=data.allocation_override, team=new_team
        )

    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    for name in ("name", "role", "team_id", "allocation_override", "is_active"):
        if name not in fields:
            continue
        old, new = getattr(user, name), getattr(data, name)
        if isinstance(new, Role):
            new = new.value
        if old != new:
            before[name], after[name] = old, new
            setattr(user, name, new)
    details: dict[str, Any] = {"before": before, "after": after}
    if new_password is not None and data.password is not None:
        await passwords.write_password(session, user=user, new=new_password)
        details["password_changed"] = True
    if details.get("password_changed") or after.get("is_active") is False:
        # Whoever knew the old password (or the deactivated person) is signed out
        # everywhere; the browser that made the change stays signed in.
        keep = actor.session_id if user.id == actor.user_id else None
        await end_every_session(session, user_id=user.id, keep_session_id=keep)
    # What follows the change may expire ``user`` (the allocation's reapplication
    # refreshes rows), so its keys are read first.
    uid, org_id = user.id, user.organization_id
    await _changed(
        session, user=user, before=before, after=after, details=details, actor_id=actor.user_id
    )
    return await user_row(session, user_id=uid, organization_id=org_id)


async def _changed(
    session: AsyncSession,
    *,
    user: User,
    before: dict[str, Any],
    after: dict[str, Any],
    details: dict[str, Any],
    actor_id: int | None,
) -> None:
    """What follows a change to a user (``before``/``after``, already set on ``user``):
    who must hear of it, the allocation it moves, and its audit entry."""
    if "is_active" in after or "role" in after:
        credentials_changed(session, user_id=user.id)
    elif "team_id" in after or details.get("password_changed"):
        access_changed(session, user.id)
    if not before and "password_changed" not in details:
        return
    if after.get("role") == Role.MEMBER.value:
        dropped = await repo.drop_ownerships(session, user_id=user.id)
        if dropped:
            details["owned_teams_dropped"] = dropped
    await session.flush()

    uid, org_id = user.id, user.organization_id
    reasons = [
        label
        for key, label in (("team_id", "team changed"), ("allocation_override", "override changed"))
        if key in after
    ]
    if "team_id" in after:
        await token_requests.requester_moved(
            session,
            user_id=uid,
            organization_id=org_id,
            teams=(before["team_id"], after["team_id"]),
        )
    if reasons:
        await ledger.reapply_allocations(
            session,
            organization_id=org_id,
            user_ids=[uid],
            actor_id=actor_id,
            reason="; ".join(reasons),
        )
    await audit.record(
        session,
        organization_id=org_id,
        actor_id=actor_id,
        action="user.updated",
        target_type="user",
        target_id=uid,
        details=details,
    )


async def apply_directory(
    session: AsyncSession,
    *,
    user: User,
    role: Role | None,
    team_id: int | None,
    set_team: bool,
    via: dict[str, Any],
) -> None:
    """Make the role (unless None) and the team (when ``set_team``) what an identity
    provider's directory says, with the same effects as an admin's edit; audited with
    ``via`` (which provider) and no actor. A super admin's role is never changed here."""
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    if role is not None and user.role != Role.SUPER_ADMIN.value and user.role != role.value:
        before["role"], after["role"] = user.role, role.value
        user.role = role.value
    if set_team and user.team_id != team_id:
        before["team_id"], after["team_id"] = user.team_id, team_id
        user.team_id = team_id
    if not after:
        return
    await _changed(
        session,
        user=user,
        before=before,
        after=after,
        details={"before": before, "after": after, **via},
        actor_id=None,
    )


async def ledger_entries(
    session: AsyncSession, *, actor: Actor, user_id: int, limit: int = 50, offset: int = 0
) -> tuple[list[repo.LedgerRow], int]:
    user = await get_user_in_scope(session, actor=actor, user_id=user_id)
    return await repo.ledger_page(session, user_id=user.id, limit=limit, offset=offset)
