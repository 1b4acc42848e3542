"""Managing auto-approve rules: list, create, change, reorder, delete, preview.

Org admins manage the organization's rules and every team's; a team owner manages
the rules of the teams they own and sees the organization's (they apply to their
team's requests too) without changing them. Every change is audited. Which rule
approves what is decided in ``rules``; this module only keeps the lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.actor import Actor
from tokendesk.accounts.lookups import get_organization, get_team_in_org
from tokendesk.accounts.models import Team
from tokendesk.audit import service as audit
from tokendesk.bounds import MAX_TOKENS, is_count, is_id
from tokendesk.db import utcnow
from tokendesk.errors import Conflict, Forbidden, InvalidInput, NotFound
from tokendesk.ledger.periods import period_bounds
from tokendesk.token_requests import rules
from tokendesk.token_requests.models import ApprovalRule, RequestStatus, RuleKind, TokenRequest
from tokendesk.token_requests.schemas import (
    MAX_RULE_COUNT,
    MAX_RULE_NAME,
    MAX_RULES,
    RuleList,
    RuleOut,
    RulePreview,
)

LIMITS = ("max_amount", "max_count", "max_tokens", "pool_floor")
# The bounds of each limit: (least, most). A count of approvals is small; the
# others are token amounts, as bounded as any amount (``bounds.MAX_TOKENS``).
LIMIT_BOUNDS = {
    "max_amount": (1, MAX_TOKENS),
    "max_count": (1, MAX_RULE_COUNT),
    "max_tokens": (1, MAX_TOKENS),
    "pool_floor": (0, MAX_TOKENS),
}
EDITABLE = ("name", "enabled", *LIMITS)
# The lists of rules that approve submissions; the auto top-up is ``top_ups``'.
REQUEST_RULES = ApprovalRule.kind == RuleKind.REQUEST.value


# ---------------------------------------------------------------- checks


def clean_name(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("name: must not be empty", field="name")
    name = " ".join(value.split())
    if len(name) > MAX_RULE_NAME:
        raise InvalidInput(f"name: must be at most {MAX_RULE_NAME} characters", field="name")
    return name


def clean_limits(values: Mapping[str, object]) -> dict[str, int | None]:
    """Each limit given in ``values``, None (no limit) or a whole number in its bounds."""
    cleaned: dict[str, int | None] = {}
    for key in LIMITS:
        if key not in values:
            continue
        value = values[key]
        least, most = LIMIT_BOUNDS[key]
        if value is not None and not (is_count(value, maximum=most) and value >= least):
            raise InvalidInput(
                f"{key}: must be a whole number from {least:,} to {most:,}, or empty for no limit",
                field=key,
            )
        cleaned[key] = value
    return cleaned


def _check_enabled(value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput("enabled: must be true or false", field="enabled")
    return value


async def _team_of(actor: Actor, session: AsyncSession, team_id: object) -> Team | None:
    """The list a rule belongs to, if the caller may change it: None for the organization's."""
    if team_id is None:
        if not actor.is_org_admin:
            raise Forbidden("only org admins manage the organization's rules")
        return None
    if not is_id(team_id):
        raise InvalidInput("team_id: must be a team's id", field="team_id")
    assert isinstance(team_id, int)
    if not actor.can_manage_team(team_id):
        if actor.is_admin:
            raise Forbidden("you manage the rules of your own teams only")
        raise Forbidden("only team owners and admins manage rules")
    return await get_team_in_org(session, organization_id=actor.organization_id, team_id=team_id)


def _require_admin(actor: Actor) -> None:
    if not actor.is_admin:
        raise Forbidden("only team owners and admins manage rules")


# ---------------------------------------------------------------- reads


def _in_list(organization_id: int, team_id: int | None) -> list[Any]:
    team = ApprovalRule.team_id.is_(None) if team_id is None else ApprovalRule.team_id == team_id
    return [ApprovalRule.organization_id == organization_id, team, REQUEST_RULES]


async def _load(session: AsyncSession, actor: Actor, rule_id: int) -> ApprovalRule:
    rule = await session.get(ApprovalRule, rule_id) if is_id(rule_id) else None
    visible = (
        rule is not None
        and rule.organization_id == actor.organization_id
        and rule.kind == RuleKind.REQUEST.value
    )
    if visible and rule is not None and rule.team_id is not None and not actor.is_org_admin:
        visible = rule.team_id in actor.owned_team_ids
    if rule is None or not visible or not actor.is_admin:
        raise NotFound(f"rule {rule_id} not found")
    return rule


async def _team_names(session: AsyncSession, team_ids: set[int]) -> dict[int, str]:
    if not team_ids:
        return {}
    rows = await session.execute(select(Team.id, Team.name).where(Team.id.in_(sorted(team_ids))))
    return {team_id: name for team_id, name in rows.all()}


def _out(rule: ApprovalRule, teams: Mapping[int, str]) -> RuleOut:
    team = None
    if rule.team_id is not None:
        team = {"id": rule.team_id, "name": teams.get(rule.team_id, "")}
    return RuleOut.model_validate(
        {
            "id": rule.id,
            "name": rule.name,
            "team": team,
            "position": rule.position,
            "enabled": rule.enabled,
            **{key: getattr(rule, key) for key in LIMITS},
            "created_at": rule.created_at,
            "updated_at": rule.updated_at,
        }
    )


async def _outs(session: AsyncSession, found: Sequence[ApprovalRule]) -> list[RuleOut]:
    teams = await _team_names(session, {r.team_id for r in found if r.team_id is not None})
    return [_out(rule, teams) for rule in found]


async def list_rules(
    session: AsyncSession, *, actor: Actor, team_id: int | None = None
) -> RuleList:
    """The rules the caller may see, in the order they are tried: each team's list
    (by team), then the organization's. ``team_id``: only what that team's requests
    are offered to (its rules, then the organization's)."""
    _require_admin(actor)
    query = select(ApprovalRule).where(
        ApprovalRule.organization_id == actor.organization_id, REQUEST_RULES
    )
    if team_id is not None:
        if not actor.can_manage_team(team_id):
            raise NotFound(f"team {team_id} not found")
        query = query.where(ApprovalRule.team_id.is_(None) | (ApprovalRule.team_id == team_id))
    elif not actor.is_org_admin:
        owned = sorted(actor.owned_team_ids)
        query = query.where(ApprovalRule.team_id.is_(None) | ApprovalRule.team_id.in_(owned))
    query = query.order_by(
        ApprovalRule.team_id.is_(None), ApprovalRule.team_id, ApprovalRule.position, ApprovalRule.id
    )
    return RuleList(items=await _outs(session, list(await session.scalars(query))))


async def get_rule(session: AsyncSession, *, actor: Actor, rule_id: int) -> RuleOut:
    rule = await _load(session, actor, rule_id)
    return (await _outs(session, [rule]))[0]


# ---------------------------------------------------------------- changes


async def add_rule(
    session: AsyncSession,
    *,
    organization_id: int,
    name: str,
    team_id: int | None = None,
    enabled: bool = True,
    actor_id: int | None = None,
    **limits: int | None,
) -> ApprovalRule:
    """A new rule at the end of its list, unchecked for the caller (CLI, demo, tests);
    the name and limits are checked as the API checks them."""
    name = clean_name(name)
    cleaned = clean_limits(limits)
    unknown = set(limits) - set(LIMITS)
    if unknown:
        raise InvalidInput(f"{sorted(unknown)[0]}: not a rule's limit", field=sorted(unknown)[0])
    where = _in_list(organization_id, team_id)
    count, last = (
        await session.execute(select(func.count(), func.max(ApprovalRule.position)).where(*where))
    ).one()
    if count >= MAX_RULES:
        raise Conflict(f"a list holds at most {MAX_RULES} rules; delete one first")
    await _check_unique(session, organization_id, team_id, name)
    now = utcnow()
    rule = ApprovalRule(
        organization_id=organization_id,
        team_id=team_id,
        name=name,
        position=(last or 0) + 1 if count else 1,
        enabled=enabled,
        created_at=now,
        updated_at=now,
        **cleaned,
    )
    session.add(rule)
    await session.flush()
    await audit.record(
        session,
        organization_id=organization_id,
        actor_id=actor_id,
        action="approval_rule.created",
        target_type="approval_rule",
        target_id=rule.id,
        details={"name": name, "team_id": team_id, "enabled": enabled, **cleaned},
    )
    return rule


async def _check_unique(
    session: AsyncSession,
    organization_id: int,
    team_id: int | None,
    name: str,
    *,
    other_than: int | None = None,
) -> None:
    query = select(ApprovalRule.id).where(
        *_in_list(organization_id, team_id), func.lower(ApprovalRule.name) == name.lower()
    )
    if other_than is not None:
        query = query.where(ApprovalRule.id != other_than)
    if await session.scalar(query) is not None:
        raise Conflict(f"name: a rule named {name!r} exists in this list already", field="name")


async def create_rule(session: AsyncSession, *, actor: Actor, values: Mapping[str, Any]) -> RuleOut:
    _require_admin(actor)
    unknown = set(values) - {"name", "team_id", "enabled", *LIMITS}
    if unknown:
        raise InvalidInput(f"{sorted(unknown)[0]}: unknown field", field=sorted(unknown)[0])
    team = await _team_of(actor, session, values.get("team_id"))
    rule = await add_rule(
        session,
        organization_id=actor.organization_id,
        name=clean_name(values.get("name")),
        team_id=None if team is None else team.id,
        enabled=_check_enabled(values.get("enabled", True)),
        actor_id=actor.user_id,
        **clean_limits(values),
    )
    return (await _outs(session, [rule]))[0]


async def update_rule(
    session: AsyncSession, *, actor: Actor, rule_id: int, changes: Mapping[str, Any]
) -> RuleOut:
    """Change the given fields (``name``, ``enabled``, a limit; a limit set to None
    stops limiting). Requests it approved keep the name they were approved under."""
    rule = await _load(session, actor, rule_id)
    await _team_of(actor, session, rule.team_id)
    unknown = set(changes) - set(EDITABLE)
    if unknown:
        raise InvalidInput(f"{sorted(unknown)[0]}: cannot be changed", field=sorted(unknown)[0])
    new: dict[str, Any] = clean_limits(changes)
    if "name" in changes:
        new["name"] = clean_name(changes["name"])
        await _check_unique(
            session, rule.organization_id, rule.team_id, new["name"], other_than=rule.id
        )
    if "enabled" in changes:
        new["enabled"] = _check_enabled(changes["enabled"])
    before = {key: getattr(rule, key) for key in new}
    changed = {key: value for key, value in new.items() if before[key] != value}
    if changed:
        for key, value in changed.items():
            setattr(rule, key, value)
        rule.updated_at = utcnow()
        await session.flush()
        await audit.record(
            session,
            organization_id=rule.organization_id,
            actor_id=actor.user_id,
            action="approval_rule.updated",
            target_type="approval_rule",
            target_id=rule.id,
            details={"name": rule.name, "changes": {k: [before[k], v] for k, v in changed.items()}},
        )
    return (await _outs(session, [rule]))[0]


async def delete_rule(session: AsyncSession, *, actor: Actor, rule_id: int) -> None:
    """Remove a rule. What it approved stays approved, and keeps its name."""
    rule = await _load(session, actor, rule_id)
    await _team_of(actor, session, rule.team_id)
    details = {"name": rule.name, "team_id": rule.team_id}
    await session.delete(rule)
    await session.flush()
    await audit.record(
        session,
        organization_id=actor.organization_id,
        actor_id=actor.user_id,
        action="approval_rule.deleted",
        target_type="approval_rule",
        target_id=rule_id,
        details=details,
    )


async def reorder(
    session: AsyncSession, *, actor: Actor, team_id: int | None, ids: Sequence[object]
) -> RuleList:
    """Put a list's rules in the order of ``ids``: every rule of the list, each once."""
    team = await _team_of(actor, session, team_id)
    checked = [value for value in ids if is_id(value)]
    if len(checked) != len(ids) or len(set(checked)) != len(checked):
        raise InvalidInput("ids: must be distinct rule ids", field="ids")
    assert all(isinstance(value, int) for value in checked)
    where = _in_list(actor.organization_id, None if team is None else team.id)
    found = {rule.id: rule for rule in await session.scalars(select(ApprovalRule).where(*where))}
    if set(found) != set(checked):
        raise InvalidInput("ids: must name every rule of the list, each once", field="ids")
    for position, rule_id in enumerate(checked, start=1):
        rule = found[int(rule_id)]  # type: ignore[call-overload]
        if rule.position != position:
            rule.position = position
            rule.updated_at = utcnow()
    await session.flush()
    await audit.record(
        session,
        organization_id=actor.organization_id,
        actor_id=actor.user_id,
        action="approval_rule.reordered",
        target_type="approval_rule",
        target_id=None,
        details={"team_id": None if team is None else team.id, "order": checked},
    )
    ordered = [found[int(rule_id)] for rule_id in checked]  # type: ignore[call-overload]
    return RuleList(items=await _outs(session, ordered))


# ---------------------------------------------------------------- preview


def last_period(at: datetime, *, reset_day: int, timezone: str) -> tuple[datetime, datetime]:
    start, _ = period_bounds(at, reset_day=reset_day, timezone=timezone)
    return period_bounds(start - timedelta(microseconds=1), reset_day=reset_day, timezone=timezone)


async def preview(
    session: AsyncSession,
    *,
    actor: Actor,
    values: Mapping[str, Any],
    now: datetime | None = None,
) -> RulePreview:
    """What a rule with these limits would have done with last period's requests in
    its scope (every request made then, whatever became of it; the auto top-up's
    grants are no requests made), taken in the order
    they were made, with each person's count and tokens as the rule would have kept
    them. The pool floor is left out: last period's pool is not kept as it stood."""
    _require_admin(actor)
    team = await _team_of(actor, session, values.get("team_id"))
    limits = clean_limits(values)
    org = await get_organization(session, actor.organization_id)
    start, end = last_period(now or utcnow(), reset_day=org.reset_day, timezone=org.timezone)
    query = (
        select(TokenRequest.user_id, TokenRequest.amount)
        .where(
            TokenRequest.organization_id == org.id,
            TokenRequest.created_at >= start,
            TokenRequest.created_at < end,
            TokenRequest.status != RequestStatus.CANCELLED.value,
            # The auto top-up's grants were never submitted: no rule is offered them.
            ~TokenRequest.decided_by_rule_id.in_(
                select(ApprovalRule.id).where(
                    ApprovalRule.organization_id == org.id,
                    ApprovalRule.kind == RuleKind.TOP_UP.value,
                )
            )
            | TokenRequest.decided_by_rule_id.is_(None),
        )
        .order_by(TokenRequest.created_at, TokenRequest.id)
    )
    if team is not None:
        query = query.where(TokenRequest.team_id == team.id)
    draft = ApprovalRule(**{key: limits.get(key) for key in LIMITS})
    draft.pool_floor = None
    seen: dict[int, tuple[int, int]] = {}
    total = approved = tokens = 0
    for user_id, amount in (await session.execute(query)).all():
        total += 1
        count, granted = seen.get(user_id, (0, 0))
        if rules.fits(draft, amount=amount, approved=count, tokens=granted, pool_left=None):
            seen[user_id] = (count + 1, granted + amount)
            approved += 1
            tokens += amount
    return RulePreview(
        period_start=start, period_end=end, requests=total, approved=approved, tokens=tokens
    )
