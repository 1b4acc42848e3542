"""Organizations: creating one, its settings and monthly pool, the super admin's list.

``create_organization`` is the unchecked operation (CLI, demo, tests);
``create_organization_as`` the same for an HTTP caller, checked against the actor.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.actor import Actor
from tokendesk.accounts.auth import end_password_sessions
from tokendesk.accounts.lookups import get_organization
from tokendesk.accounts.models import Organization, Team
from tokendesk.accounts.schemas import OrganizationIn, OrganizationUpdate
from tokendesk.accounts.service import require_org_admin, require_super_admin
from tokendesk.accounts.signin import BREAK_GLASS_ROLES
from tokendesk.audit import service as audit
from tokendesk.db import utcnow
from tokendesk.errors import Conflict, Forbidden, InvalidInput
from tokendesk.events.bus import access_changed, emit
from tokendesk.ledger import pool as ledger_pool
from tokendesk.ledger import service as ledger
from tokendesk.ledger.periods import is_valid_timezone, period_bounds
from tokendesk.ledger.pool import PoolUsage

SETTINGS = (
    "name",
    "default_allocation",
    "reset_day",
    "timezone",
    "max_request",
    "pool",
    "low_balance_percent",
    "carry_over_debt",
    "password_sign_in",
    "provision_users",
    "provision_domains",
    "provision_team_id",
)


@dataclass(frozen=True)
class OrganizationView:
    organization: Organization
    period_start: datetime
    next_reset_at: datetime
    pool_usage: PoolUsage | None


def _duplicate(name: str) -> Conflict:
    return Conflict(f"name: an organization named {name!r} already exists", field="name")


def _check_password_sign_in(
    name: str, password_sign_in: bool, sso_organizations: Collection[str]
) -> None:
    """Passwords may be turned off only where an identity provider signs people in:
    otherwise every member but the admins would be locked out."""
    if not password_sign_in and name not in sso_organizations:
        raise InvalidInput(
            "password_sign_in: no single sign-on provider signs people in to this "
            "organization (TOKENDESK_OIDC_PROVIDERS); configure one before turning "
            "passwords off",
            field="password_sign_in",
        )


def domains_text(domains: Sequence[str] | None) -> str | None:
    """The stored form of a list of provisioning domains: comma-separated, None for any."""
    return ",".join(domains) if domains else None


def domains_of(text: str | None) -> list[str]:
    return [domain for domain in (text or "").split(",") if domain]


async def _check_provision_team(session: AsyncSession, organization_id: int, team_id: int) -> None:
    team = await session.get(Team, team_id)
    if team is None or team.organization_id != organization_id:
        raise InvalidInput(
            f"provision_team_id: team {team_id} not found in this organization",
            field="provision_team_id",
        )


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
    password_sign_in: bool = True,
    provision_users: bool = True,
    provision_domains: Sequence[str] | None = None,
    actor_id: int | None = None,
    sso_organizations: Collection[str] = (),
) -> Organization:
    _check_timezone(timezone)
    _check_password_sign_in(name, password_sign_in, sso_organizations)
    if not 1 <= reset_day <= 28:
        raise InvalidInput("reset_day: must be between 1 and 28", field="reset_day")
    if await session.scalar(select(Organization.id).where(Organization.name == name)):
        raise _duplicate(name)
    org = Organization(
        name=name,
        default_allocation=default_allocation,
        reset_day=reset_day,
        timezone=timezone,
        max_request=max_request,
        pool=pool,
        low_balance_percent=low_balance_percent,
        carry_over_debt=carry_over_debt,
        password_sign_in=password_sign_in,
        provision_users=provision_users,
        provision_domains=domains_text(provision_domains),
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


async def create_organization_as(
    session: AsyncSession,
    *,
    actor: Actor,
    data: OrganizationIn,
    sso_organizations: Collection[str] = (),
) -> OrganizationView:
    require_super_admin(actor)
    try:
        org = await create_organization(
            session,
            **data.model_dump(),
            actor_id=actor.user_id,
            sso_organizations=sso_organizations,
        )
    except IntegrityError:
        raise _duplicate(data.name) from None
    return await organization_view(session, organization_id=org.id)


async def _views(
    session: AsyncSession, orgs: Sequence[Organization], *, now: datetime
) -> list[OrganizationView]:
    usages = await ledger_pool.pool_usages(session, orgs=orgs, now=now)
    views = []
    for org in orgs:
        start, end = period_bounds(now, reset_day=org.reset_day, timezone=org.timezone)
        views.append(OrganizationView(org, start, end, usages.get(org.id)))
    return views


async def organization_view(
    session: AsyncSession, *, organization_id: int, now: datetime | None = None
) -> OrganizationView:
    now = now or utcnow()
    org = await get_organization(session, organization_id)
    return (await _views(session, [org], now=now))[0]


async def get_settings(
    session: AsyncSession, *, actor: Actor, now: datetime | None = None
) -> OrganizationView:
    if not actor.is_admin:
        raise Forbidden("this needs a team owner, org admin or super admin")
    return await organization_view(session, organization_id=actor.organization_id, now=now)


async def update_settings(
    session: AsyncSession,
    *,
    actor: Actor,
    data: OrganizationUpdate,
    now: datetime | None = None,
    sso_organizations: Collection[str] = (),
) -> OrganizationView:
    """Change the settings present in ``data``, effective for the current period.

    A new default allocation re-applies to everyone it governs; a new reset day or
    time zone moves the end of every current period to the new next reset (the
    start stays, so this period is simply shorter or longer). ``sso_organizations``
    names the organizations an identity provider signs people in to.
    """
    require_org_admin(actor)
    now = now or utcnow()
    fields = data.model_fields_set
    if data.timezone is not None:
        _check_timezone(data.timezone)
    # The organization, then its balances in user order, as bulk approvals take them;
    # the reset and the updates below would take balances in other orders. No key
    # update, as lookups.get_organization locks it: a settlement inserting usage takes a
    # key-share lock on the organization while it has a balance this waits for.
    await session.execute(
        select(Organization.id)
        .where(Organization.id == actor.organization_id)
        .with_for_update(key_share=True)
    )
    await ledger.lock_in_user_order(session, ledger.users_of(actor.organization_id))
    # Periods that ended under the old settings close under them, before anything moves.
    await ledger.rollover_due(session, now=now, organization_id=actor.organization_id)
    org = await get_organization(session, actor.organization_id)
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    for name in SETTINGS:
        wanted = getattr(data, name)
        if name == "provision_domains":
            wanted = domains_text(wanted)
        if name in fields and wanted != getattr(org, name):
            before[name], after[name] = getattr(org, name), wanted
    if "name" in after:
        taken = await session.scalar(
            select(Organization.id).where(
                Organization.name == after["name"], Organization.id != org.id
            )
        )
        if taken is not None:
            raise _duplicate(after["name"])
    if not after:
        return await organization_view(session, organization_id=org.id, now=now)
    if after.get("provision_team_id") is not None:
        await _check_provision_team(session, org.id, after["provision_team_id"])
    if "password_sign_in" in after or "name" in after:
        _check_password_sign_in(
            after.get("name", org.name),
            after.get("password_sign_in", org.password_sign_in),
            sso_organizations,
        )

    for name, value in after.items():
        setattr(org, name, value)
    try:
        await session.flush()
    except IntegrityError:
        raise _duplicate(after["name"]) from None
    org_id = org.id
    details: dict[str, Any] = {"before": before, "after": after}
    if after.get("password_sign_in") is False:
        # Turning passwords off takes effect for the browsers already signed in with one.
        ended = await end_password_sessions(
            session, organization_id=org_id, keep_roles=BREAK_GLASS_ROLES
        )
        for user_id in ended:
            access_changed(session, user_id)
        details["password_sessions_ended_for"] = len(ended)
    if "provision_domains" in after:
        before["provision_domains"] = domains_of(before["provision_domains"])
        after["provision_domains"] = domains_of(after["provision_domains"])
    if "reset_day" in after or "timezone" in after:
        _, end = period_bounds(now, reset_day=org.reset_day, timezone=org.timezone)
        moved = await ledger.move_period_end(session, organization_id=org_id, end=end)
        details["next_reset_at"] = end.isoformat()
        # Open chat pages show "resets on <date>": they hear of the new date at once.
        for balance in moved:
            event = ledger.balance_event(balance, cause="reset_schedule")
            emit(session, replace(event, data={**event.data, "timezone": org.timezone}))
    await audit.record(
        session,
        organization_id=org_id,
        actor_id=actor.user_id,
        action="organization.updated",
        target_type="organization",
        target_id=org_id,
        details=details,
    )
    if "default_allocation" in after:
        await ledger.reapply_allocations(
            session,
            organization_id=org_id,
            user_ids=None,
            actor_id=actor.user_id,
            reason="organization default changed",
        )
    session.expire_all()
    return await organization_view(session, organization_id=org_id, now=now)


async def list_organizations(
    session: AsyncSession, *, actor: Actor, now: datetime | None = None
) -> list[OrganizationView]:
    require_super_admin(actor)
    now = now or utcnow()
    orgs = list(await session.scalars(select(Organization).order_by(Organization.name)))
    return await _views(session, orgs, now=now)
