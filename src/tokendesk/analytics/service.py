"""Analytics figures: who spent how many tokens, when and on which model; requests.

Every figure starts from a :class:`~tokendesk.analytics.selection.Selection`
(the caller's scope, the range and the filters, checked by ``selection_for``)
and reads rollups, token requests and balances, never raw usage events.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.analytics import repository as repo
from tokendesk.analytics import requests_repository as requests_repo
from tokendesk.analytics.forecast import forecast, project
from tokendesk.analytics.schemas import (
    ByEndpointOut,
    ByModelOut,
    DecisionKindCount,
    EndpointUsage,
    FiltersOut,
    ModelUsage,
    Requester,
    RequestsOut,
    RuleCount,
    Series,
    StatusCount,
    TopTeam,
    TopTeamsOut,
    TopUser,
    TopUsersOut,
    UsageOverTimeOut,
)
from tokendesk.analytics.selection import (
    DEFAULT_LIMIT,
    ENDPOINTS,
    MAX_LIMIT,
    MAX_MODEL_LENGTH,
    Query,
    Selection,
    filter_choices,
    resolve_range,
    selection_for,
    shown_endpoint,
    stored_endpoint,
    team_scope,
)
from tokendesk.errors import InvalidInput
from tokendesk.metering.models import NO_ENDPOINT, NO_TEAM
from tokendesk.token_requests.models import DecisionKind, RequestStatus

# The callers' one entry point: selection and forecast live in their own modules.
__all__ = [
    "CHART_SERIES",
    "DEFAULT_LIMIT",
    "ENDPOINTS",
    "MAX_LIMIT",
    "MAX_MODEL_LENGTH",
    "Query",
    "Selection",
    "by_endpoint",
    "by_model",
    "endpoint_choices",
    "filter_choices",
    "forecast",
    "project",
    "requests",
    "resolve_range",
    "selection_for",
    "team_scope",
    "top_teams",
    "top_users",
    "usage_over_time",
]

# Stacks beyond this many are summed into "Other": a chart of 100 colours says nothing.
CHART_SERIES = 8
# What usage over time stacks by, and what its "Other" counts.
STACKS = {"team": "teams", "model": "models", "endpoint": "endpoints"}
# Each endpoint's name on the page; usage reported through the usage API has none.
ENDPOINT_LABELS = {
    "chat": "Chat completions",
    "responses": "Responses",
    "embeddings": "Embeddings",
    "messages": "Messages",
    "completions": "Completions (legacy)",
    NO_ENDPOINT: "Reported by other apps",
}


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole > 0 else None


def _team_label(team_id: int, names: dict[int, str]) -> str:
    if team_id == NO_TEAM:
        return "No team"
    return names.get(team_id, f"Deleted team #{team_id}")


# ---------------------------------------------------------------- usage


async def top_users(
    session: AsyncSession, *, selection: Selection, limit: int | None = DEFAULT_LIMIT
) -> TopUsersOut:
    """Users ranked by tokens used in the range (``limit`` None: all of them)."""
    r, where = selection.range, selection.where
    per_user: dict[int, int] = defaultdict(int)
    for row in await repo.series_usage(
        session, where=where, first_day=r.first_day, last_day=r.last_day
    ):
        per_user[row.user_id] += row.tokens
    ranked = sorted(per_user.items(), key=lambda item: (-item[1], item[0]))
    chosen = ranked if limit is None else ranked[:limit]
    ids = [user_id for user_id, _ in chosen]
    calls = await repo.calls_by_user(
        session, where=where, first_day=r.first_day, last_day=r.last_day, user_ids=ids
    )
    people = await repo.people(session, user_ids=ids)
    tallies = await requests_repo.requests_by_user(
        session, where=where, start=r.start, end=r.end, user_ids=ids
    )
    items: list[TopUser] = []
    for user_id, tokens in chosen:
        person = people.get(user_id)
        if person is None:
            continue
        tally = tallies.get(user_id)
        range_allocation = round(person.allocation * selection.allocation_factor)
        items.append(
            TopUser(
                user_id=user_id,
                name=person.name,
                email=person.email,
                team_id=person.team_id,
                team_name=person.team_name,
                tokens=tokens,
                calls=calls.get(user_id, 0),
                allocation=person.allocation,
                range_allocation=range_allocation,
                share_of_allocation=_share(tokens, range_allocation),
                requests=tally.requests if tally else 0,
                requested=tally.requested if tally else 0,
                granted=tally.granted if tally else 0,
            )
        )
    return TopUsersOut(
        range=r,
        # Users' running totals know no endpoints: every endpoint is counted.
        filters=selection.filters.model_copy(update={"endpoint": None}),
        total_tokens=sum(per_user.values()),
        active_users=len(per_user),
        items=items,
    )


async def top_teams(
    session: AsyncSession, *, selection: Selection, limit: int | None = None
) -> TopTeamsOut:
    """Teams ranked by tokens spent in them in the range; idle teams in scope come last."""
    r, where = selection.range, selection.where
    totals = await repo.team_totals(
        session, where=where, first_day=r.first_day, last_day=r.last_day
    )
    names = dict(await repo.teams(session, organization_id=where.organization_id))
    members = await repo.team_members(session, organization_id=where.organization_id)
    tallies = await requests_repo.requests_by_team(session, where=where, start=r.start, end=r.end)
    visible = set(names) if where.team_ids is None else set(where.team_ids)
    team_ids = set(totals) | {team_id for team_id in visible if team_id in names}
    total_tokens = sum(tokens for tokens, _ in totals.values())
    items: list[TopTeam] = []
    for team_id in team_ids:
        tokens, calls = totals.get(team_id, (0, 0))
        count, allocation = members.get(team_id, (0, 0))
        tally = tallies.get(team_id)
        items.append(
            TopTeam(
                team_id=team_id,
                name=_team_label(team_id, names),
                exists=team_id in names,
                tokens=tokens,
                calls=calls,
                share_of_tokens=_share(tokens, total_tokens),
                members=count,
                allocation=allocation,
                requests=tally.requests if tally else 0,
                requested=tally.requested if tally else 0,
                granted=tally.granted if tally else 0,
            )
        )
    items.sort(key=lambda team: (-team.tokens, team.name.lower(), team.team_id))
    return TopTeamsOut(
        range=r,
        filters=selection.filters,
        total_tokens=total_tokens,
        items=items if limit is None else items[:limit],
    )


async def usage_over_time(
    session: AsyncSession,
    *,
    selection: Selection,
    stack: str = "team",
    series: int = CHART_SERIES,
) -> UsageOverTimeOut:
    """Tokens per day of the range, stacked by team, model or endpoint (the biggest
    ``series``)."""
    if stack not in STACKS:
        raise InvalidInput(f"stack: must be one of {', '.join(STACKS)}", field="stack")
    r, where = selection.range, selection.where
    rows = await repo.daily_by(
        session, where=where, first_day=r.first_day, last_day=r.last_day, stack=stack
    )
    days = [r.first_day + timedelta(days=offset) for offset in range(r.days)]
    index = {day: offset for offset, day in enumerate(days)}
    per_key: dict[Any, list[int]] = defaultdict(lambda: [0] * len(days))
    for day, key, tokens in rows:
        per_key[key][index[day]] += tokens
    ranked = sorted(per_key.items(), key=lambda item: (-sum(item[1]), str(item[0])))
    names: dict[int, str] = {}
    if stack == "team":
        names = dict(await repo.teams(session, organization_id=where.organization_id))

    def key_and_label(key: Any) -> tuple[str, str]:
        if stack == "team":
            return str(key), _team_label(key, names)
        if stack == "endpoint":
            return shown_endpoint(key), endpoint_label(key)
        return str(key), str(key)

    out = [
        Series(key=shown, label=label, total=sum(tokens), tokens=tokens)
        for key, tokens in ranked[:series]
        for shown, label in [key_and_label(key)]
    ]
    rest = ranked[series:]
    if rest:
        other = [sum(tokens[i] for _, tokens in rest) for i in range(len(days))]
        label_other = f"Other ({len(rest)} {STACKS[stack]})"
        out.append(Series(key="other", label=label_other, total=sum(other), tokens=other))
    totals = [sum(tokens[i] for tokens in per_key.values()) for i in range(len(days))]
    return UsageOverTimeOut(
        range=r, filters=selection.filters, stack=stack, days=days, totals=totals, series=out
    )


def _kinds(row: repo.Totals, total_tokens: int) -> dict[str, Any]:
    return {
        "tokens": row.tokens,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "cached_tokens": row.cached_tokens,
        "reasoning_tokens": row.reasoning_tokens,
        "calls": row.calls,
        "share_of_tokens": _share(row.tokens, total_tokens),
    }


async def by_model(session: AsyncSession, *, selection: Selection) -> ByModelOut:
    """Tokens (prompt, completion, cached and reasoning) and calls per model in the range."""
    r = selection.range
    rows = await repo.model_totals(
        session, where=selection.where, first_day=r.first_day, last_day=r.last_day
    )
    total_tokens = sum(row.tokens for row in rows)
    items = [ModelUsage(model=row.key, **_kinds(row, total_tokens)) for row in rows]
    items.sort(key=lambda item: (-item.tokens, item.model))
    return ByModelOut(
        range=r,
        filters=selection.filters,
        total_tokens=total_tokens,
        total_calls=sum(row.calls for row in rows),
        items=items,
    )


def endpoint_label(stored: str) -> str:
    return ENDPOINT_LABELS.get(stored, stored)


def endpoint_choices() -> list[tuple[str, str]]:
    """(value, label) of every endpoint the endpoint filter takes."""
    return [(endpoint, endpoint_label(stored_endpoint(endpoint))) for endpoint in ENDPOINTS]


async def by_endpoint(session: AsyncSession, *, selection: Selection) -> ByEndpointOut:
    """Tokens of each kind and calls per gateway endpoint (the API called) in the range."""
    r = selection.range
    rows = await repo.endpoint_totals(
        session, where=selection.where, first_day=r.first_day, last_day=r.last_day
    )
    total_tokens = sum(row.tokens for row in rows)
    items = [
        EndpointUsage(
            endpoint=shown_endpoint(row.key),
            label=endpoint_label(row.key),
            **_kinds(row, total_tokens),
        )
        for row in rows
    ]
    items.sort(key=lambda item: (-item.tokens, item.endpoint))
    return ByEndpointOut(
        range=r,
        filters=selection.filters,
        total_tokens=total_tokens,
        total_calls=sum(row.calls for row in rows),
        total_cached_tokens=sum(row.cached_tokens for row in rows),
        total_reasoning_tokens=sum(row.reasoning_tokens for row in rows),
        items=items,
    )


# ---------------------------------------------------------------- requests


async def requests(
    session: AsyncSession, *, selection: Selection, limit: int | None = DEFAULT_LIMIT
) -> RequestsOut:
    """Requests made in the range: counts by status, tokens asked and granted, decision time.

    The model filter does not apply: a request is for tokens, not for a model.
    """
    r, where = selection.range, selection.where
    counts = {
        status: (n, asked, granted)
        for status, n, asked, granted in await requests_repo.request_counts(
            session, where=where, start=r.start, end=r.end
        )
    }
    by_status = [
        StatusCount(status=status.value, count=n, requested=asked, granted=granted)
        for status in RequestStatus
        for n, asked, granted in [counts.get(status.value, (0, 0, 0))]
    ]
    decided = sum(item.count for item in by_status if item.status in requests_repo.DECIDED)
    by_kind, by_rule = await _decisions_by_kind(session, selection)
    by_rules = sum(item.count for item in by_kind if item.kind == DecisionKind.RULE.value)
    median = await requests_repo.median_decision_seconds(
        session, where=where, start=r.start, end=r.end, decided=decided - by_rules
    )
    tallies = await requests_repo.requests_by_user(
        session, where=where, start=r.start, end=r.end, limit=limit
    )
    people = await repo.people(session, user_ids=list(tallies))
    top = [
        Requester(
            user_id=user_id,
            name=people[user_id].name,
            email=people[user_id].email,
            team_name=people[user_id].team_name,
            requests=tally.requests,
            requested=tally.requested,
            granted=tally.granted,
            approved=tally.approved,
            rejected=tally.rejected,
            pending=tally.pending,
        )
        for user_id, tally in tallies.items()
        if user_id in people
    ]
    return RequestsOut(
        range=r,
        filters=FiltersOut(team_id=selection.filters.team_id, model=None, endpoint=None),
        total=sum(item.count for item in by_status),
        requested=sum(item.requested for item in by_status),
        granted=sum(item.granted for item in by_status),
        decided=decided,
        median_decision_seconds=median,
        by_status=by_status,
        by_kind=by_kind,
        by_rule=by_rule,
        top_requesters=top,
    )


KINDS = tuple(kind.value for kind in DecisionKind)


async def _decisions_by_kind(
    session: AsyncSession, selection: Selection
) -> tuple[list[DecisionKindCount], list[RuleCount]]:
    r = selection.range
    rows = await requests_repo.decision_kinds(
        session, where=selection.where, start=r.start, end=r.end
    )
    kinds = {kind: [0, 0] for kind in (*KINDS, "unknown")}
    rules: list[RuleCount] = []
    for kind, rule_id, name, n, granted in rows:
        tally = kinds[kind if kind in KINDS else "unknown"]
        tally[0] += n
        tally[1] += granted
        if kind == "rule" and rule_id is not None:
            rules.append(RuleCount(rule_id=rule_id, name=name or "", count=n, granted=granted))
    rules.sort(key=lambda rule: (-rule.count, rule.rule_id))
    return (
        [DecisionKindCount(kind=k, count=n, granted=g) for k, (n, g) in kinds.items() if n],
        rules,
    )
