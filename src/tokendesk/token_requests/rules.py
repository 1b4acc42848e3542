"""Auto-approve rules: which rule, if any, approves a request as it is submitted.

A rule belongs to the organization (``team_id`` NULL) or to one team. A submitted
request is offered to the requester's team's rules first, then the organization's,
each list by ``position``; the first rule whose every limit it fits approves it,
in the submission's own transaction, through ``recording.record_decision`` (the
path a person's approval takes). A request no rule covers stays pending.

The limits, each optional:
- ``max_amount``: the request asks for at most this many tokens;
- ``max_count``: the rule has approved fewer than this many of the requester's
  requests in their current period;
- ``max_tokens``: the rule's approvals for the requester this period, with this
  one, come to at most this many tokens;
- ``pool_floor``: with this grant, the organization's pool still has at least this
  many tokens left (an organization without a pool has nothing to run out of).

The per-user limits count the rule's own approvals, so two rules do not share a
cap; the period is the requester's (``balances.period_start``), so a rollover
starts every count again.

Locks are those of a person's approval: the organization's row (when it has a
pool), then the requester's balance row, both held until commit and taken before
the submission writes anything (``candidates``). Every count and the pool are read
after both are taken, so two submissions racing for the last place under a cap
are checked one after the other (the second sees the first's approval). The locks
are taken only when some rule's ``max_amount`` admits the request: a submission no
rule could approve costs one indexed read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.bounds import BALANCE_CEILING
from tokendesk.ledger import pool as ledger_pool
from tokendesk.ledger import service as ledger
from tokendesk.ledger.models import Balance
from tokendesk.token_requests import pool
from tokendesk.token_requests.models import (
    ApprovalRule,
    DecisionKind,
    RequestStatus,
    RuleKind,
    TokenRequest,
)
from tokendesk.token_requests.recording import Decider, record_decision
from tokendesk.token_requests.schemas import TokenRequestOut


def note_of(rule_name: str) -> str:
    """The decision note of a rule's approval, as the queue and the requester see it."""
    return f"auto-approved by rule {rule_name}"


async def rules_for(
    session: AsyncSession, *, organization_id: int, team_id: int | None
) -> list[ApprovalRule]:
    """The enabled rules a request of ``team_id`` is offered to, in the order they are tried."""
    teams = [team_id] if team_id is not None else []
    query = (
        select(ApprovalRule)
        .where(
            ApprovalRule.organization_id == organization_id,
            ApprovalRule.enabled.is_(True),
            ApprovalRule.kind == RuleKind.REQUEST.value,
            (ApprovalRule.team_id.is_(None) | ApprovalRule.team_id.in_(teams)),
        )
        .order_by(
            case((ApprovalRule.team_id.is_(None), 1), else_=0),
            ApprovalRule.position,
            ApprovalRule.id,
        )
    )
    return list(await session.scalars(query))


async def tallies(
    session: AsyncSession, *, user_id: int, rule_ids: Sequence[int], since: datetime
) -> dict[int, tuple[int, int]]:
    """``rule id -> (approvals, tokens)`` of the user's requests approved by those
    rules since ``since`` (the start of their period)."""
    if not rule_ids:
        return {}
    query = (
        select(
            TokenRequest.decided_by_rule_id,
            func.count(),
            func.coalesce(func.sum(TokenRequest.approved_amount), 0),
        )
        .where(
            TokenRequest.user_id == user_id,
            TokenRequest.decision_kind == DecisionKind.RULE.value,
            TokenRequest.status == RequestStatus.APPROVED.value,
            TokenRequest.decided_by_rule_id.in_(list(rule_ids)),
            TokenRequest.decided_at >= since,
        )
        .group_by(TokenRequest.decided_by_rule_id)
    )
    rows = (await session.execute(query)).all()
    return {
        rule_id: (int(n), int(tokens or 0)) for rule_id, n, tokens in rows if rule_id is not None
    }


def fits(
    rule: ApprovalRule | RuleView,
    *,
    amount: int,
    approved: int,
    tokens: int,
    pool_left: int | None,
) -> bool:
    """Whether a request of ``amount`` fits every limit of ``rule``, given what the rule
    already approved for the requester this period and what the pool has left
    (None: no pool)."""
    if rule.max_amount is not None and amount > rule.max_amount:
        return False
    if rule.max_count is not None and approved + 1 > rule.max_count:
        return False
    if rule.max_tokens is not None and tokens + amount > rule.max_tokens:
        return False
    if pool_left is not None:
        # The pool check of a person's approval, and then the rule's own floor.
        if amount > pool_left:
            return False
        if rule.pool_floor is not None and pool_left - amount < rule.pool_floor:
            return False
    return True


@dataclass(frozen=True)
class RuleView:
    """A rule's figures, read once: a rollover later in the transaction expires rows."""

    id: int
    name: str
    max_amount: int | None
    max_count: int | None
    max_tokens: int | None
    pool_floor: int | None


@dataclass(frozen=True)
class Candidates:
    """The rules that could approve a submission, with their locks taken."""

    rules: list[RuleView]
    has_pool: bool


async def candidates(
    session: AsyncSession,
    *,
    organization_id: int,
    has_pool: bool,
    requester_id: int,
    team_id: int | None,
    amount: int,
) -> Candidates | None:
    """The enabled rules whose ``max_amount`` admits ``amount``, in the order they are
    tried; None when there are none (the submission then takes no lock).

    With candidates, the locks of a person's approval are taken here, before the
    submission writes anything: the request's insert holds a key-share lock on the
    organization's row (its foreign key), so taking the row lock after it would let
    two submissions each wait for the other's.
    """
    rules = await rules_for(session, organization_id=organization_id, team_id=team_id)
    found = [
        RuleView(r.id, r.name, r.max_amount, r.max_count, r.max_tokens, r.pool_floor)
        for r in rules
        if r.max_amount is None or amount <= r.max_amount
    ]
    if not found:
        return None
    if has_pool:
        await pool.lock_organization(session, organization_id=organization_id)
    await ledger.lock_in_user_order(session, [requester_id])
    return Candidates(found, has_pool)


async def auto_decide(
    session: AsyncSession,
    *,
    found: Candidates,
    organization_id: int,
    request_id: int,
    requester_id: int,
    amount: int,
    balance: Balance,
    now: datetime,
) -> TokenRequestOut | None:
    """Approve the just-submitted request by the first of ``found`` it fits; None if
    none does."""
    # Past the ceiling a grant is refused; a rule then leaves the request to a person.
    if balance.granted + amount > BALANCE_CEILING:
        return None
    pool_left: int | None = None
    if found.has_pool:
        # Locked in ``candidates`` already; read afresh, as a rollover expires it.
        org = await pool.lock_organization(session, organization_id=organization_id)
        usage = await ledger_pool.pool_usage(session, org=org, now=now)
        pool_left = None if usage is None else usage.left
    counted = await tallies(
        session,
        user_id=requester_id,
        rule_ids=[r.id for r in found.rules if r.max_count is not None or r.max_tokens is not None],
        since=balance.period_start,
    )
    for rule in found.rules:
        approved, tokens = counted.get(rule.id, (0, 0))
        if not fits(rule, amount=amount, approved=approved, tokens=tokens, pool_left=pool_left):
            continue
        return await record_decision(
            session,
            organization_id=organization_id,
            request_id=request_id,
            requester_id=requester_id,
            requested=amount,
            to=RequestStatus.APPROVED,
            grant=amount,
            decider=Decider(
                user_id=None, kind=DecisionKind.RULE, rule_id=rule.id, rule_name=rule.name
            ),
            note=note_of(rule.name),
            now=now,
        )
    return None
