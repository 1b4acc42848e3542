"""Auto top-up: when a member's usage crosses a share of what they have this period,
grant them a fixed bump, recorded as a rule's decision.

An organization has at most one top-up rule (an ``ApprovalRule`` of kind ``top_up``,
off until an org admin turns it on). Its figures:
- ``trigger_percent``: the share of what the member has this period (allocation,
  grants and adjustments) whose crossing by their usage triggers it; a bump raises
  what they have, so usage can cross the share again later;
- ``top_up_amount``: the bump;
- ``cooldown_minutes``: after a top-up, none for the member for this long;
- the ceiling per member per period: ``max_count`` top-ups, ``max_tokens`` tokens
  (at least one of them), and ``pool_floor`` as for any rule.

The hook is ``after_usage``, called by metering with the batch's locked balance rows,
which carry the rule's id and trigger (``ledger.usage.MemberBalance``): telling that a
debit crossed nothing costs no query. A crossing is a debit whose "before" is under
the share and whose "after" is at or over it. The balance rows stay locked until
commit, so of two debits crossing at once the second reads the first's usage and
top-up, and the ceilings are counted from committed rows. A crossing while the rule
is cooling down or at its ceiling grants nothing; the member may still ask.

The pool, when the organization has one, is read under the organization's row lock,
as every grant's; but the balance rows are locked already here, and an approval
takes the organization's row first, so the lock is taken without waiting (``SKIP
LOCKED``): while another grant holds it, this crossing grants nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.actor import Actor
from tokendesk.accounts.models import Organization
from tokendesk.accounts.service import require_org_admin
from tokendesk.audit import service as audit
from tokendesk.bounds import BALANCE_CEILING, MAX_TOKENS, is_count
from tokendesk.db import dialect_of, utcnow
from tokendesk.errors import Forbidden, InvalidInput
from tokendesk.ledger import pool as ledger_pool
from tokendesk.ledger.usage import MemberBalance
from tokendesk.token_requests import rules
from tokendesk.token_requests.models import (
    ApprovalRule,
    DecisionKind,
    RequestStatus,
    RuleKind,
    TokenRequest,
)
from tokendesk.token_requests.recording import Decider, record_granted
from tokendesk.token_requests.schemas import MAX_RULE_COUNT, TopUpOut

NAME = "Auto top-up"
# A week: a longer wait is a period's ceiling, not a cooldown.
MAX_COOLDOWN_MINUTES = 7 * 24 * 60
FIGURES = {
    "trigger_percent": (1, 100),
    "top_up_amount": (1, MAX_TOKENS),
    "cooldown_minutes": (0, MAX_COOLDOWN_MINUTES),
    "max_count": (1, MAX_RULE_COUNT),
    "max_tokens": (1, MAX_TOKENS),
    "pool_floor": (0, MAX_TOKENS),
}
REQUIRED = ("trigger_percent", "top_up_amount")
# What the form offers before the rule exists (it is off until saved on).
SUGGESTED: dict[str, int | None] = {
    "trigger_percent": 80,
    "top_up_amount": 10_000,
    "cooldown_minutes": 60,
    "max_count": 3,
    "max_tokens": None,
    "pool_floor": None,
}


def crossed(balance: MemberBalance, delta: int) -> bool:
    """Whether a debit of ``delta`` (already in ``balance.used``) took the member's
    usage across the top-up's share of what they have."""
    if balance.top_up_trigger is None or delta <= 0:
        return False
    has = balance.allocation + balance.granted + balance.adjusted
    if has <= 0:
        return False
    line = balance.top_up_trigger * has
    return (balance.used - delta) * 100 < line <= balance.used * 100


async def after_usage(
    session: AsyncSession,
    balances: Mapping[int, MemberBalance],
    used: Mapping[int, int],
    *,
    now: datetime,
) -> None:
    """Top up each member whose usage this batch (``used``: tokens per user, already
    in ``balances``) crossed the trigger."""
    for user_id, delta in used.items():
        if crossed(balances[user_id], delta):
            await _top_up(session, balances[user_id], now=now)


async def _tally(
    session: AsyncSession, *, rule_id: int, user_id: int, since: datetime
) -> tuple[int, int, datetime | None]:
    """(top-ups, tokens) the rule granted the member since ``since``, and its last top-up."""
    query = select(
        func.count(),
        func.coalesce(func.sum(TokenRequest.approved_amount), 0),
        select(func.max(TokenRequest.decided_at))
        .where(TokenRequest.user_id == user_id, TokenRequest.decided_by_rule_id == rule_id)
        .scalar_subquery(),
    ).where(
        TokenRequest.user_id == user_id,
        TokenRequest.decision_kind == DecisionKind.RULE.value,
        TokenRequest.status == RequestStatus.APPROVED.value,
        TokenRequest.decided_by_rule_id == rule_id,
        TokenRequest.decided_at >= since,
    )
    count, tokens, last = (await session.execute(query)).one()
    return int(count), int(tokens or 0), last


async def _pool_left(session: AsyncSession, organization_id: int, now: datetime) -> int | None:
    """What the pool has left, read under the organization's row lock taken without
    waiting; None with no pool; -1 when another grant holds the lock."""
    query = select(Organization).where(Organization.id == organization_id)
    if dialect_of(session) == "postgresql":
        # FOR NO KEY UPDATE: exclusive against every grant's pool lock, not against
        # the key-share locks of rows that merely reference the organization.
        query = query.with_for_update(key_share=True, skip_locked=True)
    query = query.execution_options(populate_existing=True)
    org = await session.scalar(query)
    if org is None:
        return -1
    usage = await ledger_pool.pool_usage(session, org=org, now=now)
    return None if usage is None else usage.left


async def _top_up(session: AsyncSession, balance: MemberBalance, *, now: datetime) -> None:
    assert balance.top_up_rule_id is not None
    rule = await session.get(ApprovalRule, balance.top_up_rule_id)
    if rule is None or not rule.enabled or rule.top_up_amount is None:
        return
    amount = rule.top_up_amount
    if balance.granted + amount > BALANCE_CEILING:
        return
    count, tokens, last = await _tally(
        session, rule_id=rule.id, user_id=balance.user_id, since=balance.period_start
    )
    cooldown = timedelta(minutes=rule.cooldown_minutes or 0)
    if last is not None and now < last + cooldown:
        return
    if not rules.fits(rule, amount=amount, approved=count, tokens=tokens, pool_left=None):
        return
    pool_left = await _pool_left(session, balance.organization_id, now)
    if pool_left is not None and not rules.fits(
        rule, amount=amount, approved=count, tokens=tokens, pool_left=pool_left
    ):
        return
    share = rule.trigger_percent
    await record_granted(
        session,
        organization_id=balance.organization_id,
        requester_id=balance.user_id,
        team_id=balance.team_id,
        amount=amount,
        reason=f"{NAME}: {share}% of this period's tokens used",
        balance_at_request=balance.remaining,
        decider=Decider(user_id=None, kind=DecisionKind.RULE, rule_id=rule.id, rule_name=rule.name),
        note=rules.note_of(rule.name),
        now=now,
    )
    # The row is locked: this mirrors the grant, for any later reader of the batch.
    balance.granted += amount


# ---------------------------------------------------------------- settings


async def _rule_of(session: AsyncSession, organization_id: int) -> ApprovalRule | None:
    return await session.scalar(
        select(ApprovalRule).where(
            ApprovalRule.organization_id == organization_id,
            ApprovalRule.kind == RuleKind.TOP_UP.value,
        )
    )


def _out(rule: ApprovalRule | None) -> TopUpOut:
    if rule is None:
        return TopUpOut(id=None, name=NAME, enabled=False, **SUGGESTED)
    return TopUpOut(
        id=rule.id,
        name=rule.name,
        enabled=rule.enabled,
        **{key: getattr(rule, key) for key in FIGURES},
    )


async def get_top_up(session: AsyncSession, *, actor: Actor) -> TopUpOut:
    """The organization's auto top-up; off, with suggested figures, until one is saved.
    Admins see it (a team owner's members are topped up by it too)."""
    if not actor.is_admin:
        raise Forbidden("only team owners and admins see the auto top-up")
    return _out(await _rule_of(session, actor.organization_id))


def clean_figures(values: Mapping[str, object]) -> dict[str, int | None]:
    """Each figure, None (none) or a whole number in its bounds; the trigger and the
    bump are required, and so is a ceiling (a count or tokens per period)."""
    cleaned: dict[str, int | None] = {}
    for key, (least, most) in FIGURES.items():
        value = values.get(key)
        if value is None:
            if key in REQUIRED:
                raise InvalidInput(f"{key}: required", field=key)
            cleaned[key] = None
            continue
        if not (is_count(value, maximum=most) and value >= least):
            raise InvalidInput(
                f"{key}: must be a whole number from {least:,} to {most:,}", field=key
            )
        cleaned[key] = value
    if cleaned["max_count"] is None and cleaned["max_tokens"] is None:
        raise InvalidInput(
            "max_count: set a ceiling per period, in top-ups or in tokens", field="max_count"
        )
    return cleaned


async def set_top_up(session: AsyncSession, *, actor: Actor, values: Mapping[str, Any]) -> TopUpOut:
    """Save the organization's auto top-up (org admins): ``enabled`` and the figures."""
    require_org_admin(actor)
    enabled = values.get("enabled", False)
    if not isinstance(enabled, bool):
        raise InvalidInput("enabled: must be true or false", field="enabled")
    figures = clean_figures(values)
    rule = await _rule_of(session, actor.organization_id)
    now = utcnow()
    if rule is None:
        rule = ApprovalRule(
            organization_id=actor.organization_id,
            team_id=None,
            name=NAME,
            kind=RuleKind.TOP_UP.value,
            position=0,
            enabled=enabled,
            created_at=now,
            updated_at=now,
            **figures,
        )
        session.add(rule)
        before: dict[str, Any] = {}
    else:
        before = {"enabled": rule.enabled, **{key: getattr(rule, key) for key in FIGURES}}
        rule.enabled = enabled
        for key, value in figures.items():
            setattr(rule, key, value)
        rule.updated_at = now
    await session.flush()
    after = {"enabled": enabled, **figures}
    changed = {
        key: [before.get(key), value] for key, value in after.items() if before.get(key) != value
    }
    if changed:
        await audit.record(
            session,
            organization_id=actor.organization_id,
            actor_id=actor.user_id,
            action="approval_rule.top_up_updated",
            target_type="approval_rule",
            target_id=rule.id,
            details={"name": rule.name, "changes": changed},
        )
    return _out(rule)
