"""Personal API keys: everyone manages their own; admins revoke keys of people in their scope.

``issue_api_key`` is the unchecked operation (CLI, demo, tests); the actor-taking
services check the HTTP caller first.

A revoked key stops working on the very next call: authentication only accepts
keys whose ``revoked_at`` is unset.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts import repository as repo
from tokendesk.accounts.actor import Actor
from tokendesk.accounts.keycache import credentials_changed
from tokendesk.accounts.models import ApiKey, User
from tokendesk.accounts.security import hash_api_key, new_api_key
from tokendesk.accounts.service import (
    can_manage_user,
    get_user_in_scope,
    require_manager,
    require_outranks,
)
from tokendesk.audit import service as audit
from tokendesk.db import utcnow
from tokendesk.errors import Conflict, NotFound


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


async def list_own_keys(session: AsyncSession, *, actor: Actor) -> list[ApiKey]:
    return await repo.api_keys_of(session, user_id=actor.user_id)


async def create_own_key(session: AsyncSession, *, actor: Actor, name: str) -> tuple[ApiKey, str]:
    """A new key for the caller; the plain key is returned here and never again."""
    user = await session.get(User, actor.user_id)
    if user is None:
        raise NotFound(f"user {actor.user_id} not found")
    return await issue_api_key(session, user=user, name=name, actor_id=actor.user_id)


async def list_user_keys(session: AsyncSession, *, actor: Actor, user_id: int) -> list[ApiKey]:
    user = await get_user_in_scope(session, actor=actor, user_id=user_id)
    if user.id != actor.user_id:
        require_manager(actor, user)
    return await repo.api_keys_of(session, user_id=user.id)


async def _revoke(session: AsyncSession, *, actor: Actor, key: ApiKey, owner: User) -> None:
    key_id, name, prefix = key.id, key.name, key.prefix
    owner_id, org_id = owner.id, owner.organization_id
    if not await repo.revoke_api_key(session, key_id=key_id, now=utcnow()):
        raise Conflict(f"api key {key_id} is already revoked")
    credentials_changed(session, user_id=owner_id)
    await audit.record(
        session,
        organization_id=org_id,
        actor_id=actor.user_id,
        action="api_key.revoked",
        target_type="api_key",
        target_id=key_id,
        details={"user_id": owner_id, "name": name, "prefix": prefix},
    )


async def revoke_own_key(session: AsyncSession, *, actor: Actor, key_id: int) -> None:
    key = await session.get(ApiKey, key_id)
    if key is None or key.user_id != actor.user_id:
        raise NotFound(f"api key {key_id} not found")
    owner = await session.get(User, actor.user_id)
    assert owner is not None
    await _revoke(session, actor=actor, key=key, owner=owner)


async def revoke_key(session: AsyncSession, *, actor: Actor, key_id: int) -> None:
    """Revoke a key of anyone in the caller's scope (or their own)."""
    key = await session.get(ApiKey, key_id)
    owner = await session.get(User, key.user_id) if key is not None else None
    if key is None or owner is None:
        raise NotFound(f"api key {key_id} not found")
    if owner.id != actor.user_id:
        if not can_manage_user(actor, owner):
            raise NotFound(f"api key {key_id} not found")
        require_outranks(actor, owner)
    await _revoke(session, actor=actor, key=key, owner=owner)
