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
    approving = to is RequestStatus.APPROVED
    changed = await transitions.transition(
        session,
        ids=[request_id],
        to=to,
        now=now,
        decided_by_id=decider.user_id,
        note=note,
        approved_amount=grant if approving else None,
        within_teams=within_teams,
        kind=decider.kind,
        rule=(decider.rule_id, decider.rule_name) if decider.rule_id is not None else None,
    )
    if not changed:
        return None
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
