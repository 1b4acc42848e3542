"""Tokens beyond what the rules give: an allocation override that raises a period's
allocation, and a manual adjustment. Both hand out tokens like a grant, so what
they add is bound by the maximum per request and the pool."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.actor import Actor
from tokendesk.accounts.models import Organization, Team, User
from tokendesk.accounts.service import get_user_in_scope, require_manager, require_outranks
from tokendesk.audit import service as audit
from tokendesk.db import utcnow
from tokendesk.errors import Forbidden, NotFound
from tokendesk.ledger import service as ledger
from tokendesk.ledger.models import Balance, EntryKind
from tokendesk.token_requests import pool


async def check_new_override(
    session: AsyncSession, *, organization_id: int, override: int, team_id: int | None
) -> None:
    """A newcomer's override above what the rules would give them is a raise like
    any other (see ``check_override_raise``); the default part is not."""
    org = await pool.lock_organization(session, organization_id=organization_id)
    team = await session.get(Team, team_id) if team_id is not None else None
    default = org.default_allocation
    if team is not None and team.organization_id == org.id and team.default_allocation is not None:
        default = team.default_allocation
    await _check_raise(session, org=org, amount=override - default)


async def check_override_raise(
    session: AsyncSession, *, user: User, override: int | None, team: Team | None
) -> None:
    """An override that raises this period's allocation hands out tokens like a grant:
    the raise is bound by the maximum per request and the pool (see ``pool.check_increase``).

    Runs before anything about ``user`` changes, so the current allocation (or, for a
    period that has ended, what its reset would give) is the one in force now.
    """
    org = await pool.lock_organization(session, organization_id=user.organization_id)
    if override is not None:
        target = override
    elif team is not None and team.default_allocation is not None:
        target = team.default_allocation
    else:
        target = org.default_allocation
    balance = await session.get(Balance, user.id)
    if balance is None:
        raise NotFound(f"user {user.id} has no balance")
    current = balance.allocation
    if balance.period_end <= utcnow():
        current_team = await session.get(Team, user.team_id) if user.team_id is not None else None
        current = ledger.resolve_allocation(user, current_team, org)
    await _check_raise(session, org=org, amount=target - current)


async def _check_raise(session: AsyncSession, *, org: Organization, amount: int) -> None:
    """An override's raise of ``amount`` is bound like a grant; ``org`` is already locked."""
    await pool.check_increase(
        session, organization_id=org.id, amount=amount, field="allocation_override", locked=org
    )


async def adjust_balance(
    session: AsyncSession, *, actor: Actor, user_id: int, amount: int, note: str
) -> Balance:
    """A manual correction of the current period, always with a note.

    Adding tokens is bound like an approval (the maximum per request, the pool);
    taking them back never is.
    """
    user = await get_user_in_scope(session, actor=actor, user_id=user_id)
    if user.id == actor.user_id:
        raise Forbidden("you may not adjust your own balance")
    require_manager(actor, user)
    require_outranks(actor, user)
    uid, org_id = user.id, user.organization_id
    await pool.check_increase(session, organization_id=org_id, amount=amount, field="amount")
    balance = await ledger.credit(
        session,
        user_id=uid,
        kind=EntryKind.ADJUSTMENT,
        amount=amount,
        actor_id=actor.user_id,
        reason=note,
    )
    await audit.record(
        session,
        organization_id=org_id,
        actor_id=actor.user_id,
        action="balance.adjusted",
        target_type="user",
        target_id=uid,
        details={"amount": amount, "note": note, "remaining": balance.remaining},
    )
    return balance
