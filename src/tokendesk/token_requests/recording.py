"""The one path a single decision takes, a person's or an auto-approve rule's
(``record_decision``); bulk decisions take their set-based path in ``bulk``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.audit import service as audit
from tokendesk.ledger import service as ledger
from tokendesk.ledger.models import EntryKind
from tokendesk.notifications import outbox
from tokendesk.observability import counted_decisions
from tokendesk.token_requests import events, service
from tokendesk.token_requests import transitions_repository as transitions
from tokendesk.token_requests.models import DecisionKind, RequestStatus
from tokendesk.token_requests.schemas import TokenRequestOut


@dataclass(frozen=True)
class Decider:
    """Who decides: a person (``user_id``), or an auto-approve rule (``rule_id`` and
    the rule's name at that moment; ``user_id`` None)."""

    user_id: int | None
    kind: DecisionKind
    rule_id: int | None = None
    rule_name: str | None = None

    def audit_details(self) -> dict[str, Any]:
        if self.rule_id is None:
            return {}
        return {"rule": self.rule_name, "rule_id": self.rule_id}


async def record_decision(
    session: AsyncSession,
    *,
    organization_id: int,
    request_id: int,
    requester_id: int,
    requested: int,
    to: RequestStatus,
    grant: int | None,
    decider: Decider,
    note: str | None,
    now: datetime,
    within_teams: frozenset[int] | None = None,
) -> TokenRequestOut | None:
    """The one path a single decision takes, a person's or a rule's: the conditional
    transition, the grant, the audit row, the requester's notification, the live
    events and the decision metric. The caller has checked scope and, for an
    approval, the pool under the organization's lock. None when the request was no
    longer pending (or no longer in ``within_teams``): nothing is written then."""
    changed = await transitions.transition(
        session,
        ids=[request_id],
        to=to,
        now=now,
        decided_by_id=decider.user_id,
        note=note,
        approved_amount=grant if to is RequestStatus.APPROVED else None,
        within_teams=within_teams,
        kind=decider.kind,
        rule=(decider.rule_id, decider.rule_name) if decider.rule_id is not None else None,
    )
    if not changed:
        return None
    return await _recorded(
        session,
        organization_id=organization_id,
        request_id=request_id,
        requester_id=requester_id,
        requested=requested,
        to=to,
        grant=grant,
        decider=decider,
        note=note,
        now=now,
    )


async def record_granted(
    session: AsyncSession,
    *,
    organization_id: int,
    requester_id: int,
    team_id: int | None,
    amount: int,
    reason: str,
    balance_at_request: int,
    decider: Decider,
    note: str,
    now: datetime,
) -> TokenRequestOut:
    """A rule's grant nobody asked for (the auto top-up), recorded as a request the
    rule approved as it was made: the row is written approved, then everything a
    decision does follows, as in ``record_decision``."""
    assert decider.rule_id is not None and decider.rule_name is not None
    request_id = await transitions.insert_granted(
        session,
        organization_id=organization_id,
        user_id=requester_id,
        team_id=team_id,
        amount=amount,
        reason=reason,
        balance_at_request=balance_at_request,
        rule=(decider.rule_id, decider.rule_name),
        note=note,
        now=now,
    )
    return await _recorded(
        session,
        organization_id=organization_id,
        request_id=request_id,
        requester_id=requester_id,
        requested=amount,
        to=RequestStatus.APPROVED,
        grant=amount,
        decider=decider,
        note=note,
        now=now,
    )


async def _recorded(
    session: AsyncSession,
    *,
    organization_id: int,
    request_id: int,
    requester_id: int,
    requested: int,
    to: RequestStatus,
    grant: int | None,
    decider: Decider,
    note: str | None,
    now: datetime,
) -> TokenRequestOut:
    """What follows a decision's transition: grant, audit, notification, events, metric."""
    approving = to is RequestStatus.APPROVED
    details: dict[str, Any] = {"note": note, **decider.audit_details()}
    if approving:
        assert grant is not None
        details.update(amount=grant, requested=requested)
        await ledger.credit(
            session,
            user_id=requester_id,
            kind=EntryKind.GRANT,
            amount=grant,
            actor_id=decider.user_id,
            reason=note or f"token request {request_id} approved",
            token_request_id=request_id,
            now=now,
        )
    await audit.record(
        session,
        organization_id=organization_id,
        actor_id=decider.user_id,
        action=f"token_request.{to.value}",
        target_type="token_request",
        target_id=request_id,
        details=details,
    )
    await outbox.requests_decided(
        session, organization_id=organization_id, request_ids=[request_id], now=now
    )
    out = await service.reloaded(
        session, organization_id=organization_id, request_id=request_id, now=now
    )
    events.emit_change(session, out, organization_id=organization_id, change=to.value)
    counted_decisions(session, kind=decider.kind.value, status=to.value, count=1)
    return out
