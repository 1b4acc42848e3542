"""Integrations: chat apps calling the gateway on behalf of an organization's users.

An integration is a named connection with one key (``tdi_...``) that speaks only
for the people its chat app names, and only at the gateway: the REST API and the
admin center refuse it. Its preset says where the chat app names its user; the
gateway reads that (``gateway/identity.py``) and :mod:`tokendesk.accounts.identities`
turns it into a tokendesk user, provisioning them on first use.

``create_integration`` is the unchecked operation (CLI, demo, tests); the
actor-taking services check the HTTP caller first.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.actor import Actor
from tokendesk.accounts.lookups import get_organization
from tokendesk.accounts.models import INTEGRATION_SOURCE, IdentityPreset, Integration
from tokendesk.accounts.schemas import IntegrationIn, IntegrationUpdate
from tokendesk.accounts.security import hash_api_key
from tokendesk.accounts.service import require_org_admin
from tokendesk.audit import service as audit
from tokendesk.db import utcnow
from tokendesk.errors import Conflict, NotFound

INTEGRATION_KEY_PREFIX = "tdi_"


def is_integration_key(key: str) -> bool:
    return key.startswith(INTEGRATION_KEY_PREFIX)


@dataclass(frozen=True)
class Spelling:
    """The header names (lower-case, any one of each) a chat app sends its user in."""

    user_id: tuple[str, ...]
    email: tuple[str, ...]
    name: tuple[str, ...]
    jwt: tuple[str, ...] = ()
    body_user: bool = False


PRESETS: Mapping[IdentityPreset, Spelling] = {
    IdentityPreset.OPEN_WEBUI: Spelling(
        user_id=("x-openwebui-user-id", "x-open-webui-user-id"),
        email=("x-openwebui-user-email", "x-open-webui-user-email"),
        name=("x-openwebui-user-name", "x-open-webui-user-name"),
        jwt=("x-openwebui-user-jwt", "x-open-webui-user-jwt"),
    ),
    IdentityPreset.LIBRECHAT: Spelling(
        user_id=("x-librechat-user-id",),
        email=("x-librechat-user-email",),
        name=("x-librechat-user-name",),
        body_user=True,
    ),
    IdentityPreset.GENERIC: Spelling(
        user_id=("x-tokendesk-user-id",),
        email=("x-tokendesk-user-email",),
        name=("x-tokendesk-user-name",),
        body_user=True,
    ),
}


@dataclass(frozen=True)
class IntegrationRef:
    """An integration as the gateway needs it: cached with its key."""

    id: int
    organization_id: int
    name: str
    spelling: Spelling
    jwt_secret: str | None

    @property
    def source(self) -> str:
        """The namespace of this chat app's user ids in ``external_identities``."""
        return f"{INTEGRATION_SOURCE}{self.id}"


def spelling_of(
    preset: str,
    *,
    user_id_header: str | None = None,
    email_header: str | None = None,
    name_header: str | None = None,
) -> Spelling:
    base = PRESETS[IdentityPreset(preset)]

    def header(custom: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
        return (custom.strip().lower(),) if custom and custom.strip() else default

    return Spelling(
        user_id=header(user_id_header, base.user_id),
        email=header(email_header, base.email),
        name=header(name_header, base.name),
        jwt=base.jwt,
        body_user=base.body_user,
    )


def ref_of(integration: Integration) -> IntegrationRef:
    return IntegrationRef(
        id=integration.id,
        organization_id=integration.organization_id,
        name=integration.name,
        spelling=spelling_of(
            integration.preset,
            user_id_header=integration.user_id_header,
            email_header=integration.email_header,
            name_header=integration.name_header,
        ),
        jwt_secret=integration.jwt_secret or None,
    )


async def integrations_by_hash(
    session: AsyncSession, key_hashes: Collection[str]
) -> dict[str, IntegrationRef]:
    """Integrations whose key is one of these and not revoked."""
    rows = await session.scalars(
        select(Integration).where(
            Integration.key_hash.in_(key_hashes), Integration.revoked_at.is_(None)
        )
    )
    return {row.key_hash: ref_of(row) for row in rows}


def _duplicate(name: str) -> Conflict:
    return Conflict(f"name: an integration named {name!r} already exists", field="name")


async def create_integration(
    session: AsyncSession,
    *,
    organization_id: int,
    name: str,
    preset: IdentityPreset = IdentityPreset.GENERIC,
    user_id_header: str | None = None,
    email_header: str | None = None,
    name_header: str | None = None,
    jwt_secret: str | None = None,
    actor_id: int | None = None,
) -> tuple[Integration, str]:
    """Create an integration; its plain key is returned once and never stored."""
    await get_organization(session, organization_id)
    name = name.strip()
    taken = await session.scalar(
        select(Integration.id).where(
            Integration.organization_id == organization_id, Integration.name == name
        )
    )
    if taken is not None:
        raise _duplicate(name)
    key = INTEGRATION_KEY_PREFIX + secrets.token_urlsafe(32)
    integration = Integration(
        organization_id=organization_id,
        name=name,
        preset=IdentityPreset(preset).value,
        user_id_header=user_id_header or None,
        email_header=email_header or None,
        name_header=name_header or None,
        jwt_secret=jwt_secret or None,
        prefix=key[:11],
        key_hash=hash_api_key(key),
        created_by=actor_id,
        created_at=utcnow(),
    )
    session.add(integration)
    try:
        await session.flush()
    except IntegrityError:
        raise _duplicate(name) from None
    await audit.record(
        session,
        organization_id=organization_id,
        actor_id=actor_id,
        action="integration.created",
        target_type="integration",
        target_id=integration.id,
        details={"name": name, "preset": integration.preset, "signed": bool(jwt_secret)},
    )
    return integration, key


async def integrations_of(session: AsyncSession, *, organization_id: int) -> list[Integration]:
    """An organization's integrations, active ones first, by name."""
    rows = await session.scalars(
        select(Integration)
        .where(Integration.organization_id == organization_id)
        .order_by(Integration.revoked_at.is_not(None), Integration.name)
    )
    return list(rows)


async def list_integrations(session: AsyncSession, *, actor: Actor) -> list[Integration]:
    require_org_admin(actor)
    return await integrations_of(session, organization_id=actor.organization_id)


async def get_integration(
    session: AsyncSession, *, actor: Actor, integration_id: int
) -> Integration:
    require_org_admin(actor)
    integration = await session.get(Integration, integration_id)
    if integration is None or integration.organization_id != actor.organization_id:
        raise NotFound(f"integration {integration_id} not found")
    return integration


async def create_integration_as(
    session: AsyncSession, *, actor: Actor, data: IntegrationIn
) -> tuple[Integration, str]:
    require_org_admin(actor)
    return await create_integration(
        session, organization_id=actor.organization_id, **data.model_dump(), actor_id=actor.user_id
    )


def _changed(session: AsyncSession) -> None:
    """Every server process forgets its cached integrations (after commit), so a revoked
    key or a new secret counts from the next call on."""
    # Imported here: the key cache itself looks integrations up through this module.
    from tokendesk.accounts.keycache import credentials_changed

    credentials_changed(session, user_id=None)


# What an update may change, beside the secret (audited without its value).
_EDITABLE = ("name", "user_id_header", "email_header", "name_header")


async def update_integration(
    session: AsyncSession, *, actor: Actor, integration_id: int, data: IntegrationUpdate
) -> Integration:
    """Change the fields present in ``data``; the gateway reads the integration anew on
    its next call, on every server process."""
    integration = await get_integration(session, actor=actor, integration_id=integration_id)
    if integration.revoked_at is not None:
        raise Conflict(f"integration {integration_id} is revoked; create a new one instead")
    fields = data.model_fields_set
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    for name in _EDITABLE:
        value = getattr(data, name)
        if name in fields and value != getattr(integration, name):
            before[name], after[name] = getattr(integration, name), value
    details: dict[str, Any] = {}
    if "jwt_secret" in fields and data.jwt_secret != integration.jwt_secret:
        if data.jwt_secret is None:
            details["jwt_secret"] = "removed"
        else:
            details["jwt_secret"] = "changed" if integration.jwt_secret else "set"
    if not after and not details:
        return integration
    if "name" in after:
        taken = await session.scalar(
            select(Integration.id).where(
                Integration.organization_id == integration.organization_id,
                Integration.name == after["name"],
                Integration.id != integration.id,
            )
        )
        if taken is not None:
            raise _duplicate(after["name"])
    for name, value in after.items():
        setattr(integration, name, value)
    if "jwt_secret" in details:
        integration.jwt_secret = data.jwt_secret
    try:
        await session.flush()
    except IntegrityError:
        raise _duplicate(after["name"]) from None
    _changed(session)
    await audit.record(
        session,
        organization_id=integration.organization_id,
        actor_id=actor.user_id,
        action="integration.updated",
        target_type="integration",
        target_id=integration.id,
        details={"name": integration.name, "before": before, "after": after, **details},
    )
    return integration


async def revoke(
    session: AsyncSession, *, integration_id: int, actor_id: int | None = None
) -> Integration:
    """Stop the integration's key at once, on every server process (unchecked: CLI, tests)."""
    integration = await session.get(Integration, integration_id)
    if integration is None:
        raise NotFound(f"integration {integration_id} not found")
    revoked = await session.execute(
        update(Integration)
        .where(Integration.id == integration.id, Integration.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    if revoked.rowcount == 0:  # type: ignore[attr-defined]
        raise Conflict(f"integration {integration_id} is already revoked")
    _changed(session)
    await audit.record(
        session,
        organization_id=integration.organization_id,
        actor_id=actor_id,
        action="integration.revoked",
        target_type="integration",
        target_id=integration.id,
        details={"name": integration.name, "prefix": integration.prefix},
    )
    await session.refresh(integration)
    return integration


async def revoke_integration(
    session: AsyncSession, *, actor: Actor, integration_id: int
) -> Integration:
    """Revoke an integration of the organization the caller acts in."""
    await get_integration(session, actor=actor, integration_id=integration_id)
    return await revoke(session, integration_id=integration_id, actor_id=actor.user_id)
