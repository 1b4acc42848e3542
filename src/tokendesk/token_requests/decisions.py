"""Token requests change here: submit, cancel, approve and reject one request (many at
once: ``bulk``). Each transition is a conditional update on ``status = 'pending'``,
so of two deciders racing on one request the second changes nothing; an approval's
grant goes through the ledger in the same transaction. Services flush, never commit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.actor import Actor
from tokendesk.accounts.lookups import get_organization
from tokendesk.audit import service as audit
from tokendesk.db import utcnow
from tokendesk.errors import Conflict, Forbidden, InvalidInput
from tokendesk.ledger import service as ledger
from tokendesk.ledger.models import EntryKind
from tokendesk.token_requests import events, pool, service
from tokendesk.token_requests import repository as repo
from tokendesk.token_requests import transitions_repository as transitions
from tokendesk.token_requests.models import RequestStatus
from tokendesk.token_requests.schemas import TokenRequestOut


async def submit(
    session: AsyncSession,
    *,
    actor: Actor,
    amount: int,
    reason: str | None = None,
    now: datetime | None = None,
) -> TokenRequestOut:
    """Ask for more tokens; one pending request per user."""
    reason = service.clean_text(reason, field="reason")
    org = await get_organization(session, actor.home_organization_id)
    org_id = org.id
    service.check_amount(amount, org=org)
    if (pending := await repo.pending_of_user(session, user_id=actor.user_id)) is not None:
        raise _already_pending(pending.id, pending.amount)
    now = now or utcnow()
    balance = await ledger.get_balance(session, user_id=actor.user_id, now=now)
    try:
        request_id = await transitions.insert_request(
            session,
            organization_id=org_id,
            user_id=actor.user_id,
            team_id=actor.team_id,
            amount=amount,
            reason=reason,
            balance_at_request=balance.remaining,
            now=now,
        )
    except IntegrityError:
        # A concurrent submit won the race the check above could not see.
        pending = await repo.pending_of_user(session, user_id=actor.user_id)
        if pending is None:
            raise
        raise _already_pending(pending.id, pending.amount) from None
    await audit.record(
        session,
        organization_id=org_id,
        actor_id=actor.user_id,
        action="token_request.created",
        target_type="token_request",
        target_id=request_id,
        details={"amount": amount, "reason": reason},
    )
    out = await service.reloaded(session, organization_id=org_id, request_id=request_id, now=now)
    events.emit_change(session, out, organization_id=org_id, change="created")
    return out


def _already_pending(request_id: int, amount: int) -> Conflict:
    return Conflict(
        f"you already have a pending token request (#{request_id} for {amount} tokens); "
        "cancel it or wait for a decision"
    )


async def cancel(
    session: AsyncSession, *, actor: Actor, request_id: int, now: datetime | None = None
) -> TokenRequestOut:
    """The requester withdraws their own pending request."""
    now = now or utcnow()
    org = await get_organization(session, actor.organization_id)
    org_id = org.id
    row = await service.visible_row(session, actor=actor, request_id=request_id, org=org, now=now)
    if row["user_id"] != actor.user_id:
        raise Forbidden("only the requester can cancel a token request")
    changed = await transitions.transition(
        session,
        ids=[request_id],
        to=RequestStatus.CANCELLED,
        now=now,
        requester_id=actor.user_id,
    )
    if not changed:
        current = await repo.statuses(session, ids=[request_id])
        raise service.not_pending(request_id, current.get(request_id))
    await audit.record(
        session,
        organization_id=org_id,
        actor_id=actor.user_id,
        action="token_request.cancelled",
        target_type="token_request",
        target_id=request_id,
        details={"amount": row["amount"]},
    )
    out = await service.reloaded(session, organization_id=org_id, request_id=request_id, now=now)
    events.emit_change(session, out, organization_id=org_id, change="cancelled")
    return out


async def approve(
    session: AsyncSession,
    *,
    actor: Actor,
    request_id: int,
    amount: int | None = None,
    note: str | None = None,
    now: datetime | None = None,
) -> TokenRequestOut:
    """Grant the requested amount (or a smaller ``amount``) into the requester's current period."""
    to = RequestStatus.APPROVED
    return await _decide(session, actor, request_id, to, amount=amount, note=note, now=now)


async def reject(
    session: AsyncSession,
    *,
    actor: Actor,
    request_id: int,
    note: str | None = None,
    now: datetime | None = None,
) -> TokenRequestOut:
    to = RequestStatus.REJECTED
    return await _decide(session, actor, request_id, to, amount=None, note=note, now=now)


async def _decide(
    session: AsyncSession,
    actor: Actor,
    request_id: int,
    to: RequestStatus,
    *,
    amount: int | None,
    note: str | None,
    now: datetime | None,
) -> TokenRequestOut:
    service.require_decider(actor)
    note = service.clean_text(note, field="note")
    now = now or utcnow()
    org = await get_organization(session, actor.organization_id)
    org_id, has_pool = org.id, org.pool is not None
    if amount is not None:
        service.check_amount(amount, org=org)
    row = await service.visible_row(session, actor=actor, request_id=request_id, org=org, now=now)
    if row["user_id"] == actor.user_id:
        raise Forbidden("you cannot decide your own request")
    if row["status"] != RequestStatus.PENDING:
        raise service.not_pending(request_id, row["status"])
    approving = to is RequestStatus.APPROVED
    grant = row["amount"] if amount is None else amount
    if approving and grant > row["amount"]:
        # An approval answers the request; more than was asked is an adjustment,
        # which has its own note, audit row and pool check.
        raise InvalidInput(
            f"amount: must be at most the requested {row['amount']} tokens; "
            "to give more, adjust the balance",
            field="amount",
        )
    if approving and has_pool:
        locked = await pool.lock_organization(session, organization_id=org_id)
        await pool.check_pool(session, org=locked, needed=grant, now=now)
    changed = await transitions.transition(
        session,
        ids=[request_id],
        to=to,
        now=now,
        decided_by_id=actor.user_id,
        note=note,
        approved_amount=grant if approving else None,
        within_teams=service.deciding_teams(actor),
    )
    if not changed:
        # Another decider got there between our read and our update, or the
        # requester moved out of the caller's teams.
        current = await repo.statuses(session, ids=[request_id])
        raise service.not_pending(request_id, current.get(request_id))
    details: dict[str, Any] = {"note": note}
    if approving:
        details.update(amount=grant, requested=row["amount"])
        await ledger.credit(
            session,
            user_id=row["user_id"],
            kind=EntryKind.GRANT,
            amount=grant,
            actor_id=actor.user_id,
            reason=note or f"token request {request_id} approved",
            token_request_id=request_id,
            now=now,
        )
    await audit.record(
        session,
        organization_id=org_id,
        actor_id=actor.user_id,
        action=f"token_request.{to.value}",
        target_type="token_request",
        target_id=request_id,
        details=details,
    )
    out = await service.reloaded(session, organization_id=org_id, request_id=request_id, now=now)
    events.emit_change(session, out, organization_id=org_id, change=to.value)
    return out
