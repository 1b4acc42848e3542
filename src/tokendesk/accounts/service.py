"""The rules every accounts module shares: who may manage whom.

The operations live one module per object (``organizations``, ``teams``, ``users``,
``api_keys``), each with its unchecked operation for the CLI, the demo and tests
beside the checked one for HTTP callers; ``lookups`` loads an object or answers 404.
Services flush, never commit: the caller's unit of work owns the transaction.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.actor import Actor
from tokendesk.accounts.models import Role, User
from tokendesk.errors import Forbidden, NotFound


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
