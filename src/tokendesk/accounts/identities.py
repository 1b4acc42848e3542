"""From a chat app's user to a tokendesk user: found by stable id, linked by email,
provisioned on first use.

A chat app names its user by its own id (Open WebUI's user UUID, LibreChat's user
id) and usually an email. The id is the key: once linked, the person is found by
it whatever email the chat app sends later, so an email change there does not cut
anyone off. The first time, the email links an existing tokendesk user; with
nobody to link, the organization may provision a member with its default
allocation (its ``provision_users`` setting, limited to ``provision_domains``,
into ``provision_team_id``).

:func:`find` only reads and serves the gateway's cache misses; :func:`resolve`
writes (links, provisions, notes a changed email) and is called when ``find``
cannot answer alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.integrations import IntegrationRef
from tokendesk.accounts.lookups import get_organization
from tokendesk.accounts.models import ExternalIdentity, Role, Team, User
from tokendesk.audit import service as audit
from tokendesk.db import utcnow
from tokendesk.errors import Forbidden, InvalidInput

# The longest values another system's account may bring: an id, an email, a name.
MAX_EXTERNAL_ID = 255
MAX_NAME = 200
# How stale an identity's "last seen" may get before a call writes it again: often
# enough for the admin center, rarely enough that steady use stays read-only.
LAST_SEEN_RESOLUTION = timedelta(hours=1)


@dataclass(frozen=True)
class NamedUser:
    """A person as a chat app names them: the external id is the key, the email links."""

    external_id: str | None
    email: str | None
    name: str | None


@dataclass(frozen=True)
class Person:
    user_id: int
    organization_id: int
    role: Role
    email: str


def _deactivated(email: str) -> Forbidden:
    return Forbidden(
        f"user {email!r} is deactivated in tokendesk; an administrator can reactivate them"
    )


def _person(user_id: int, organization_id: int, role: str, email: str, active: bool) -> Person:
    if not active:
        raise _deactivated(email)
    return Person(user_id, organization_id, Role(role), email)


_BY_IDENTITY = select(
    User.id,
    User.organization_id,
    User.role,
    User.email,
    User.is_active,
    ExternalIdentity.id,
    ExternalIdentity.email,
    ExternalIdentity.last_seen_at,
).join(ExternalIdentity, ExternalIdentity.user_id == User.id)


async def find(
    session: AsyncSession,
    *,
    integration: IntegrationRef,
    named: NamedUser,
    now: datetime | None = None,
) -> Person | None:
    """The person, if reading alone answers: None when :func:`resolve` must write
    (not linked yet, a new email, a stale "last seen"). Raises for a deactivated user."""
    now = now or utcnow()
    if named.external_id is None:
        assert named.email is not None
        row = (
            await session.execute(
                select(User.id, User.organization_id, User.role, User.email, User.is_active).where(
                    User.email == named.email,
                    User.organization_id == integration.organization_id,
                )
            )
        ).first()
        return None if row is None else _person(*row)
    found = (
        await session.execute(
            _BY_IDENTITY.where(
                ExternalIdentity.source == integration.source,
                ExternalIdentity.external_id == named.external_id,
                User.organization_id == integration.organization_id,
            )
        )
    ).first()
    if found is None:
        return None
    user_id, organization_id, role, email, active, _, seen_email, last_seen = found
    person = _person(user_id, organization_id, role, email, active)
    if (named.email is not None and named.email != seen_email) or (
        now - last_seen > LAST_SEEN_RESOLUTION
    ):
        return None
    return person


async def resolve(
    session: AsyncSession,
    *,
    integration: IntegrationRef,
    named: NamedUser,
    now: datetime | None = None,
) -> Person:
    """The person the chat app names, linking or provisioning them as needed.

    Raises ``Forbidden`` for a deactivated user, an email of another organization,
    provisioning turned off or a domain it does not allow, and ``InvalidInput``
    when an unknown person comes without an email to provision them with. Two
    first calls of one person at once may both try to provision: the loser's
    insert fails on a unique key and its caller tries once more, then finding
    the winner's rows.
    """
    now = now or utcnow()
    if named.external_id is not None:
        found = (
            await session.execute(
                _BY_IDENTITY.where(
                    ExternalIdentity.source == integration.source,
                    ExternalIdentity.external_id == named.external_id,
                )
            )
        ).first()
        if found is not None:
            user_id, organization_id, role, email, active, identity_id, seen_email, _ = found
            if organization_id != integration.organization_id:
                raise Forbidden(f"user {named.external_id!r} belongs to another organization")
            person = _person(user_id, organization_id, role, email, active)
            await session.execute(
                update(ExternalIdentity)
                .where(ExternalIdentity.id == identity_id)
                .values(email=named.email or seen_email, last_seen_at=now)
            )
            return person
    if named.email is None:
        raise InvalidInput(
            f"{integration.spelling.email[0]}: user {named.external_id!r} is not known to "
            "tokendesk yet; send their email too, so they can be linked or provisioned",
            field=integration.spelling.email[0],
        )
    user = await session.scalar(select(User).where(User.email == named.email))
    if user is not None:
        if user.organization_id != integration.organization_id:
            raise Forbidden(f"user {named.email!r} belongs to another organization")
        if not user.is_active:
            raise _deactivated(user.email)
    else:
        user = await _provision(session, integration=integration, named=named, now=now)
    if named.external_id is not None:
        await link(
            session,
            user=user,
            source=integration.source,
            external_id=named.external_id,
            email=named.email,
            via={"integration_id": integration.id, "integration": integration.name},
            now=now,
        )
    return Person(user.id, user.organization_id, Role(user.role), user.email)


async def link(
    session: AsyncSession,
    *,
    user: User,
    source: str,
    external_id: str,
    email: str | None,
    via: dict[str, Any],
    now: datetime,
) -> None:
    """Record that ``user`` is ``external_id`` in ``source`` from now on (audited)."""
    session.add(
        ExternalIdentity(
            user_id=user.id,
            source=source,
            external_id=external_id,
            email=email,
            created_at=now,
            last_seen_at=now,
        )
    )
    await session.flush()
    await audit.record(
        session,
        organization_id=user.organization_id,
        actor_id=None,
        action="user.identity_linked",
        target_type="user",
        target_id=user.id,
        details={**via, "external_id": external_id},
    )


def domain_allowed(email: str, domains: str | None) -> bool:
    """Whether provisioning may create this address: any, without a domain list."""
    if not domains:
        return True
    domain = email.rpartition("@")[2]
    return domain in {d.strip() for d in domains.split(",") if d.strip()}


async def _provision(
    session: AsyncSession, *, integration: IntegrationRef, named: NamedUser, now: datetime
) -> User:
    assert named.email is not None
    org = await get_organization(session, integration.organization_id)
    if not org.provision_users:
        raise Forbidden(
            f"user {named.email!r} is not in tokendesk, and this organization does not "
            "provision chat-app users on first use; an administrator can add them"
        )
    if not domain_allowed(named.email, org.provision_domains):
        raise Forbidden(
            f"user {named.email!r} is not in tokendesk, and its email domain is not one "
            "this organization provisions"
        )
    team_id = org.provision_team_id
    if team_id is not None:
        team = await session.get(Team, team_id)
        if team is None or team.organization_id != org.id:
            team_id = None
    return await provision(
        session,
        organization_id=org.id,
        email=named.email,
        name=named.name,
        team_id=team_id,
        via={"integration_id": integration.id, "integration": integration.name},
        now=now,
    )


async def provision(
    session: AsyncSession,
    *,
    organization_id: int,
    email: str,
    name: str | None,
    team_id: int | None,
    via: dict[str, Any],
    role: Role = Role.MEMBER,
    now: datetime | None = None,
) -> User:
    """Create someone another system vouches for (a chat app, an identity provider) as
    a user with the organization's usual allocation, audited as provisioned ``via`` it.
    The one way both create people, so the two can never disagree on what a new
    person starts with."""
    # Imported here: users imports the token_requests and ledger services, which import
    # accounts modules this one is imported by.
    from tokendesk.accounts.users import create_user

    user = await create_user(
        session,
        organization_id=organization_id,
        email=email,
        name=name or email.partition("@")[0],
        role=role,
        team_id=team_id,
        now=now,
    )
    await audit.record(
        session,
        organization_id=organization_id,
        actor_id=None,
        action="user.provisioned",
        target_type="user",
        target_id=user.id,
        details={**via, "email": user.email, "role": user.role, "team_id": team_id},
    )
    return user
