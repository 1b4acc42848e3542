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
from tokendesk.notifications import outbox
from tokendesk.token_requests import events, pool, rules, service
from tokendesk.token_requests import repository as repo
from tokendesk.token_requests import transitions_repository as transitions
from tokendesk.token_requests.models import DecisionKind, RequestStatus
from tokendesk.token_requests.recording import Decider, record_decision
from tokendesk.token_requests.schemas import TokenRequestOut


async def submit(
    session: AsyncSession,
    *,
    actor: Actor,
    amount: int,
    reason: str | None = None,
    via: str | None = None,
    now: datetime | None = None,
) -> TokenRequestOut:
    """Ask for more tokens; one pending request per user. ``via`` names the channel
    it came through when not the chat app or the API (``request_link``), for the audit."""
    reason = service.clean_text(reason, field="reason")
    org = await get_organization(session, actor.home_organization_id)
    org_id, has_pool = org.id, org.pool is not None
    service.check_amount(amount, org=org)
    if (pending := await repo.pending_of_user(session, user_id=actor.user_id)) is not None:
        raise _already_pending(pending.id, pending.amount)
    now = now or utcnow()
    found = await rules.candidates(
        session,
        organization_id=org_id,
        has_pool=has_pool,
        requester_id=actor.user_id,
        team_id=actor.team_id,
        amount=amount,
    )
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
        details=_with_channel({"amount": amount, "reason": reason}, via),
    )
    # A rule's approval is the request's first news: approvers are not asked to
    # look at a request nobody has to decide, and the queue sees it approved.
    if found is not None:
        decided = await rules.auto_decide(
            session,
            found=found,
            organization_id=org_id,
            request_id=request_id,
            requester_id=actor.user_id,
            amount=amount,
            balance=balance,
            now=now,
        )
        if decided is not None:
            return decided
    await outbox.request_created(
        session,
        organization_id=org_id,
        request_id=request_id,
        requester_id=actor.user_id,
        team_id=actor.team_id,
        now=now,
    )
    out = await service.reloaded(session, organization_id=org_id, request_id=request_id, now=now)
    events.emit_change(session, out, organization_id=org_id, change="created")
    return out


def _with_channel(details: dict[str, Any], via: str | None) -> dict[str, Any]:
    return details if via is None else {**details, "via": via}


def _already_pending(request_id: int, amount: int) -> Conflict:
    return Conflict(
        f"you already have a pending token request (#{request_id} for {amount} tokens); "
        "cancel it or wait for a decision"
    )


async def cancel(
    session: AsyncSession,
    *,
    actor: Actor,
    request_id: int,
    via: str | None = None,
    now: datetime | None = None,
) -> TokenRequestOut:
    """The requester withdraws their own pending request (``via``: as for :func:`submit`)."""
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
        details=_with_channel({"amount": row["amount"]}, via),
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
    out = await record_decision(
        session,
        organization_id=org_id,
        request_id=request_id,
        requester_id=row["user_id"],
        requested=row["amount"],
        to=to,
        grant=grant if approving else None,
        decider=Decider(user_id=actor.user_id, kind=DecisionKind.MANUAL),
        note=note,
        within_teams=service.deciding_teams(actor),
        now=now,
    )
    if out is None:
        # Another decider got there between our read and our update, or the
        # requester moved out of the caller's teams.
        current = await repo.statuses(session, ids=[request_id])
        raise service.not_pending(request_id, current.get(request_id))
    return out
