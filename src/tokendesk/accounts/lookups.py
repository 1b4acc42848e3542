"""Loading one organization, team or user, or answering 404.

Every domain that needs an account object by id or by name loads it here; this
module depends on nothing but the models, so the ledger, token requests and
analytics can use it as well as the accounts services.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.emails import email_key
from tokendesk.accounts.models import Organization, Team, User
from tokendesk.errors import NotFound


async def get_organization(
    session: AsyncSession, organization_id: int, *, lock: bool = False
) -> Organization:
    """The organization, or NotFound. ``lock`` takes its row lock until commit and reads
    it afresh (PostgreSQL): every pool-checked change in the organization waits there
    for the one before it. SQLite's write transactions are serialized already.

    The lock is ``FOR NO KEY UPDATE``: it leaves alone the key-share lock that every
    insert referring to the organization takes, so a settlement that has its balance
    row and inserts usage never waits for it (while this waits for that balance row)."""
    if lock:
        org = await session.get(
            Organization,
            organization_id,
            with_for_update={"key_share": True},
            populate_existing=True,
        )
    else:
        org = await session.get(Organization, organization_id)
    if org is None:
        raise NotFound(f"organization {organization_id} not found")
    return org


async def organization_by_name(session: AsyncSession, name: str) -> Organization:
    org = await session.scalar(select(Organization).where(Organization.name == name))
    if org is None:
        raise NotFound(f"organization {name!r} not found")
    return org


async def get_team_in_org(session: AsyncSession, *, organization_id: int, team_id: int) -> Team:
    team = await session.get(Team, team_id)
    if team is None or team.organization_id != organization_id:
        raise NotFound(f"team {team_id} not found")
    return team


async def team_by_name(session: AsyncSession, *, organization_id: int, name: str) -> Team:
    team = await session.scalar(
        select(Team).where(Team.organization_id == organization_id, Team.name == name)
    )
    if team is None:
        raise NotFound(f"team {name!r} not found")
    return team


async def user_by_email(session: AsyncSession, email: str) -> User:
    user = await session.scalar(select(User).where(User.email == email_key(email)))
    if user is None:
        raise NotFound(f"user {email!r} not found")
    return user
