"""Signing in through an identity provider: from verified ID token claims to a user.

The protocol (authorization code with PKCE, state, nonce, the ID token's signature,
issuer, audience and expiry) is checked by Authlib in ``web/sso.py`` before anything
here runs; this module decides who the claims are and what the directory says
about them:

- found by the provider's subject (an external identity ``oidc:<provider>``), else
  linked by a verified email, else provisioned (``identities.provision``, the one
  way chat apps' users are created too);
- refused when the provider's domains or groups no longer let them in, or when
  tokendesk deactivated them, whatever the provider says;
- given, at every sign-in, the role and team their groups map to, so the directory
  stays the source of truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts import identities
from tokendesk.accounts.emails import BadEmail, normalize_email
from tokendesk.accounts.identities import MAX_EXTERNAL_ID, MAX_NAME
from tokendesk.accounts.models import ExternalIdentity, Organization, Role, Team, User
from tokendesk.accounts.sso_config import ProviderConfig, claim, groups_of
from tokendesk.accounts.users import apply_directory
from tokendesk.audit import service as audit
from tokendesk.db import utcnow

# Roles from least to most: a person in several mapped groups gets the highest.
_RANK = {Role.MEMBER: 0, Role.TEAM_OWNER: 1, Role.ORG_ADMIN: 2}


class SignInRefused(Exception):
    """The provider vouched for someone tokendesk does not let in; ``message`` is shown
    on the sign-in page as it is."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Directory:
    """What the provider says about the person signing in."""

    subject: str
    email: str
    email_verified: bool
    name: str | None
    role: Role | None  # None: the provider maps no roles; tokendesk's stands
    team: str | None
    sets_team: bool  # whether the provider decides teams at all


def directory_of(provider: ProviderConfig, claims: dict[str, Any]) -> Directory:
    """The person the claims describe, or :class:`SignInRefused`."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > MAX_EXTERNAL_ID:
        raise SignInRefused(f"{provider.button} sent no usable subject ('sub') for you.")
    email = claim(claims, provider.email_claim)
    try:
        if not isinstance(email, str):
            raise BadEmail("not a text")
        email = normalize_email(email)
    except BadEmail:
        raise SignInRefused(
            f"{provider.button} did not send your email address "
            f"(claim '{provider.email_claim}'); ask your administrator."
        ) from None
    domain = email.rpartition("@")[2]
    if provider.allowed_domains and domain not in provider.allowed_domains:
        raise SignInRefused(
            f"Accounts at {domain} may not sign in to tokendesk with {provider.button}."
        )
    groups = groups_of(claims, provider.groups_claim)
    if provider.allowed_groups and not groups & set(provider.allowed_groups):
        raise SignInRefused(
            f"Your {provider.button} account is not in a group allowed to use tokendesk."
        )
    role = None
    if provider.role_map:
        mapped = [role for group, role in provider.role_map.items() if group in groups]
        role = max(mapped, key=_RANK.__getitem__, default=Role.MEMBER)
    team: str | None = None
    sets_team = bool(provider.team_map or provider.team_claim)
    if provider.team_claim:
        value = claim(claims, provider.team_claim)
        team = value.strip()[:MAX_NAME] if isinstance(value, str) and value.strip() else None
    if team is None:
        team = next((name for group, name in provider.team_map.items() if group in groups), None)
    name = claim(claims, provider.name_claim)
    return Directory(
        subject=subject,
        email=email,
        email_verified=claims.get("email_verified") is True,
        name=name.strip()[:MAX_NAME] if isinstance(name, str) and name.strip() else None,
        role=role,
        team=team,
        sets_team=sets_team,
    )


async def _organization(session: AsyncSession, provider: ProviderConfig) -> Organization:
    org = await session.scalar(
        select(Organization).where(Organization.name == provider.organization)
    )
    if org is None:
        raise SignInRefused(
            f"{provider.button} is set up for the organization {provider.organization!r}, "
            "which does not exist; ask your administrator."
        )
    return org


async def _team_id(session: AsyncSession, org: Organization, name: str | None) -> int | None:
    """The team of that name, created as the directory names it if it is new."""
    if name is None:
        return None
    team_id = await session.scalar(
        select(Team.id).where(Team.organization_id == org.id, Team.name == name)
    )
    if team_id is not None:
        return team_id
    # Imported here: teams imports the services this module's importers need first.
    from tokendesk.accounts.teams import create_team

    team = await create_team(session, organization_id=org.id, name=name)
    await audit.record(
        session,
        organization_id=org.id,
        actor_id=None,
        action="team.provisioned",
        target_type="team",
        target_id=team.id,
        details={"name": name},
    )
    return team.id


async def sign_in_user(
    session: AsyncSession,
    *,
    provider: ProviderConfig,
    directory: Directory,
    now: datetime | None = None,
) -> User:
    """The user signing in, found, linked or provisioned, with the directory applied.
    Raises :class:`SignInRefused`."""
    now = now or utcnow()
    org = await _organization(session, provider)
    via = {"provider": provider.name}
    found = (
        await session.execute(
            select(User, ExternalIdentity.id)
            .join(ExternalIdentity, ExternalIdentity.user_id == User.id)
            .where(
                ExternalIdentity.source == provider.source,
                ExternalIdentity.external_id == directory.subject,
            )
        )
    ).first()
    team_id = await _team_id(session, org, directory.team) if directory.sets_team else None
    user: User | None
    if found is not None:
        user, identity_id = found
        _check_may_enter(user, org)
        await session.execute(
            update(ExternalIdentity)
            .where(ExternalIdentity.id == identity_id)
            .values(email=directory.email, last_seen_at=now)
        )
    else:
        user = await session.scalar(select(User).where(User.email == directory.email))
        if user is not None:
            _check_may_enter(user, org)
            if provider.require_verified_email and not directory.email_verified:
                raise SignInRefused(
                    f"{provider.button} has not verified {directory.email}, so it cannot be "
                    "linked to your tokendesk account; ask your administrator."
                )
        else:
            user = await identities.provision(
                session,
                organization_id=org.id,
                email=directory.email,
                name=directory.name,
                role=directory.role or Role.MEMBER,
                team_id=team_id,
                via=via,
                now=now,
            )
        await identities.link(
            session,
            user=user,
            source=provider.source,
            external_id=directory.subject,
            email=directory.email,
            via=via,
            now=now,
        )
    await apply_directory(
        session,
        user=user,
        role=directory.role,
        team_id=team_id,
        set_team=directory.sets_team,
        via=via,
    )
    # What the directory changed may have expired the loaded row (allocations re-applied).
    await session.refresh(user)
    if directory.role == Role.TEAM_OWNER and team_id is not None:
        # A team owner by the directory owns the team the directory puts them in;
        # ownerships given in tokendesk stay as they are.
        from tokendesk.accounts.teams import add_team_owner

        team = await session.get(Team, team_id)
        if team is not None:
            await add_team_owner(session, team=team, user=user)
    await audit.record(
        session,
        organization_id=user.organization_id,
        actor_id=user.id,
        action="user.login",
        target_type="user",
        target_id=user.id,
        details=via,
    )
    return user


def _check_may_enter(user: User, org: Organization) -> None:
    if user.organization_id != org.id:
        raise SignInRefused(
            "Your tokendesk account belongs to another organization than this sign-in's; "
            "ask your administrator."
        )
    if not user.is_active:
        raise SignInRefused(
            "Your tokendesk account is deactivated. An administrator can reactivate it."
        )
