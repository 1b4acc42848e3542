"""SQL for the accounts listings: one query per page, never one per row."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, delete, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from tokendesk.accounts.models import ApiKey, Organization, Role, Team, TeamOwner, User
from tokendesk.accounts.schemas import AllocationSource
from tokendesk.ledger.models import Balance, LedgerEntry


@dataclass(frozen=True)
class UserRow:
    user: User
    team_name: str | None
    balance: Balance
    allocation_source: AllocationSource


@dataclass(frozen=True)
class UserFilter:
    organization_id: int
    # Scope: None means the whole organization; a set limits to members of those teams.
    team_ids: Collection[int] | None = None
    user_ids: Collection[int] | None = None
    q: str | None = None
    team_id: int | None = None
    role: Role | None = None
    active: bool | None = None


@dataclass(frozen=True)
class TeamRow:
    team: Team
    member_count: int
    owners: list[tuple[int, str]]


@dataclass(frozen=True)
class LedgerRow:
    entry: LedgerEntry
    actor_name: str | None


ALLOCATION_SOURCE = case(
    (User.allocation_override.is_not(None), "override"),
    (Team.default_allocation.is_not(None), "team"),
    else_="organization",
)


def _user_query(f: UserFilter) -> Any:
    stmt = (
        select(
            User,
            Team.name,
            Balance,
            ALLOCATION_SOURCE.label("allocation_source"),
            # The total rides along with the page: one round trip instead of two.
            func.count().over().label("total"),
        )
        .join(Balance, Balance.user_id == User.id)
        .outerjoin(Team, Team.id == User.team_id)
        .where(User.organization_id == f.organization_id)
    )
    if f.team_ids is not None:
        stmt = stmt.where(User.team_id.in_(list(f.team_ids)))
    if f.user_ids is not None:
        stmt = stmt.where(User.id.in_(list(f.user_ids)))
    if f.q:
        needle = f.q.strip().lower()
        stmt = stmt.where(
            func.lower(User.name).contains(needle, autoescape=True)
            | func.lower(User.email).contains(needle, autoescape=True)
        )
    if f.team_id is not None:
        stmt = stmt.where(User.team_id == f.team_id)
    if f.role is not None:
        stmt = stmt.where(User.role == f.role.value)
    if f.active is not None:
        stmt = stmt.where(User.is_active.is_(f.active))
    return stmt.order_by(func.lower(User.name), User.id)


async def user_page(
    session: AsyncSession, f: UserFilter, *, limit: int, offset: int
) -> tuple[list[UserRow], int]:
    """A page of users with their team name and balance, and the total across pages.

    Balances come back as stored, those whose period has ended too (see
    ``ledger.rolled_over_balances``).
    """
    stmt = _user_query(f).limit(limit).offset(offset)
    rows = (await session.execute(stmt.execution_options(populate_existing=True))).all()
    if rows:
        total = int(rows[0].total)
    elif offset:
        count = select(func.count()).select_from(_user_query(f).order_by(None).subquery())
        total = int(await session.scalar(count) or 0)
    else:
        total = 0
    items = [UserRow(row[0], row[1], row[2], row[3]) for row in rows]
    return items, total


async def team_rows(
    session: AsyncSession, *, organization_id: int, team_id: int | None = None
) -> list[TeamRow]:
    members = (
        select(User.team_id, func.count().label("members"))
        .where(User.organization_id == organization_id, User.team_id.is_not(None))
        .group_by(User.team_id)
        .subquery()
    )
    stmt = (
        select(Team, func.coalesce(members.c.members, 0))
        .outerjoin(members, members.c.team_id == Team.id)
        .where(Team.organization_id == organization_id)
        .order_by(func.lower(Team.name), Team.id)
    )
    owners_stmt = (
        select(TeamOwner.team_id, User.id, User.name)
        .join(User, User.id == TeamOwner.user_id)
        .join(Team, Team.id == TeamOwner.team_id)
        .where(Team.organization_id == organization_id)
        .order_by(func.lower(User.name), User.id)
    )
    if team_id is not None:
        stmt = stmt.where(Team.id == team_id)
        owners_stmt = owners_stmt.where(TeamOwner.team_id == team_id)
    owners: dict[int, list[tuple[int, str]]] = {}
    for owned_team, user_id, name in await session.execute(owners_stmt):
        owners.setdefault(owned_team, []).append((user_id, name))
    rows = await session.execute(stmt.execution_options(populate_existing=True))
    return [TeamRow(team, int(count), owners.get(team.id, [])) for team, count in rows]


async def team_name_taken(
    session: AsyncSession, *, organization_id: int, name: str, except_id: int | None = None
) -> bool:
    stmt = select(Team.id).where(Team.organization_id == organization_id, Team.name == name)
    if except_id is not None:
        stmt = stmt.where(Team.id != except_id)
    return await session.scalar(stmt) is not None


async def team_owner_ids(session: AsyncSession, *, team_id: int) -> list[int]:
    rows = await session.scalars(select(TeamOwner.user_id).where(TeamOwner.team_id == team_id))
    return list(rows.all())


async def team_member_ids(session: AsyncSession, *, team_id: int) -> list[int]:
    rows = await session.scalars(select(User.id).where(User.team_id == team_id))
    return list(rows.all())


async def users_in_org(
    session: AsyncSession, *, organization_id: int, user_ids: Collection[int]
) -> list[User]:
    if not user_ids:
        return []
    rows = await session.scalars(
        select(User).where(User.organization_id == organization_id, User.id.in_(list(user_ids)))
    )
    return list(rows.all())


async def detach_team_members(session: AsyncSession, *, team_id: int) -> list[int]:
    """Make every member of the team team-less; returns their ids."""
    rows = await session.execute(
        update(User)
        .where(User.team_id == team_id)
        .values(team_id=None)
        .returning(User.id)
        .execution_options(synchronize_session=False)
    )
    return [user_id for (user_id,) in rows]


async def forget_provision_team(session: AsyncSession, *, team_id: int) -> bool:
    """Provisioned people join no team from now on, if they joined this one; whether they did."""
    cleared = await session.execute(
        update(Organization)
        .where(Organization.provision_team_id == team_id)
        .values(provision_team_id=None)
        .execution_options(synchronize_session=False)
    )
    return bool(cleared.rowcount)  # type: ignore[attr-defined]


async def drop_ownerships(session: AsyncSession, *, user_id: int) -> list[int]:
    rows = await session.execute(
        delete(TeamOwner).where(TeamOwner.user_id == user_id).returning(TeamOwner.team_id)
    )
    return [team_id for (team_id,) in rows]


async def demote_idle_owners(session: AsyncSession, *, user_ids: Collection[int]) -> list[int]:
    """Team owners who no longer own any team go back to plain members."""
    if not user_ids:
        return []
    still_owns = exists().where(TeamOwner.user_id == User.id)
    rows = await session.execute(
        update(User)
        .where(User.id.in_(list(user_ids)), User.role == Role.TEAM_OWNER.value, ~still_owns)
        .values(role=Role.MEMBER.value)
        .returning(User.id)
        .execution_options(synchronize_session=False)
    )
    return [user_id for (user_id,) in rows]


async def ledger_page(
    session: AsyncSession, *, user_id: int, limit: int, offset: int
) -> tuple[list[LedgerRow], int]:
    actor = aliased(User)
    stmt = (
        select(LedgerEntry, actor.name, func.count().over().label("total"))
        .outerjoin(actor, actor.id == LedgerEntry.actor_id)
        .where(LedgerEntry.user_id == user_id)
        .order_by(LedgerEntry.created_at.desc(), LedgerEntry.id.desc())
        .limit(limit)
        .offset(offset)
    )
    rows = (await session.execute(stmt)).all()
    if rows:
        total = int(rows[0].total)
    else:
        count = select(func.count()).where(LedgerEntry.user_id == user_id)
        total = int(await session.scalar(count) or 0)
    return [LedgerRow(row[0], row[1]) for row in rows], total


async def lock_user(session: AsyncSession, *, user_id: int) -> None:
    """Hold the user's row until the transaction ends, for a rule that counts what the
    user has (PostgreSQL; SQLite runs one writer at a time anyway). NO KEY UPDATE: rows
    that merely refer to the user (usage, ledger entries) are written on meanwhile."""
    await session.execute(select(User.id).where(User.id == user_id).with_for_update(key_share=True))


async def api_keys_of(session: AsyncSession, *, user_id: int) -> list[ApiKey]:
    rows = await session.scalars(
        select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.id.desc())
    )
    return list(rows.all())


async def revoke_api_key(session: AsyncSession, *, key_id: int, now: datetime) -> bool:
    """Revoke once: a key already revoked is left alone and reported as such."""
    rows = await session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=now)
        .returning(ApiKey.id)
        .execution_options(synchronize_session=False)
    )
    return rows.first() is not None
