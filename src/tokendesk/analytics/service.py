"""Analytics: who spent how many tokens, when and on which model; requests; run-out forecast.

Scope is decided here, not in routes: org admins and super admins see the
active organization; team owners see usage spent in the teams they own (a
rollup row's team is the user's team at the time of use), requests made from
those teams, and the forecast of their current members; members see nothing.

Ranges are whole calendar days in the organization's time zone. Rollup days
are local days too, so "this period" is exact even where periods start at
local midnight (Europe/Berlin) rather than at UTC midnight.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from operator import attrgetter
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.actor import Actor
from tokendesk.accounts.models import Organization
from tokendesk.analytics import repository as repo
from tokendesk.analytics.schemas import (
    PERIOD_LABELS,
    ByModelOut,
    FiltersOut,
    ForecastItem,
    ForecastOut,
    ModelUsage,
    RangeOut,
    Requester,
    RequestsOut,
    Series,
    StatusCount,
    TopTeam,
    TopTeamsOut,
    TopUser,
    TopUsersOut,
    UsageOverTimeOut,
)
from tokendesk.db import utcnow
from tokendesk.errors import Forbidden, InvalidInput, NotFound
from tokendesk.ledger.periods import local_midnight, period_bounds, zone
from tokendesk.metering.models import NO_TEAM
from tokendesk.token_requests.models import RequestStatus

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
MAX_RANGE_DAYS = 366
MAX_MODEL_LENGTH = 200
# Stacks beyond this many are summed into "Other": a chart of 100 colours says nothing.
CHART_SERIES = 8
# A burn rate measured over minutes is noise; measure over at least this long.
MIN_ELAPSED = timedelta(hours=1)
DAY_SECONDS = 86_400
LAST_N_DAYS = {"7d": 7, "30d": 30, "90d": 90}


@dataclass(frozen=True)
class Query:
    """What the caller asked to see (all optional)."""

    period: str | None = None
    first_day: date | None = None
    last_day: date | None = None
    team_id: int | None = None
    model: str | None = None


@dataclass(frozen=True)
class Selection:
    """A checked query: the caller's scope, the resolved range and filters."""

    where: repo.Where
    range: RangeOut
    filters: FiltersOut
    now: datetime
    # Days of the current period: pro-rates monthly allocations to other ranges.
    period_days: float

    @property
    def allocation_factor(self) -> float:
        if self.range.period in ("current", "previous"):
            return 1.0
        return self.range.days / self.period_days


# ---------------------------------------------------------------- scope and range


def team_scope(actor: Actor, team_id: int | None) -> frozenset[int] | None:
    """The team ids the caller may see with this filter; None means the whole organization."""
    if not actor.is_admin:
        raise Forbidden("analytics are for team owners and administrators")
    if team_id is not None and team_id < 0:
        raise InvalidInput(
            "team_id: must be a team id, or 0 for users without a team", field="team_id"
        )
    if actor.is_org_admin:
        return None if team_id is None else frozenset({team_id})
    if team_id is None:
        return actor.owned_team_ids
    if team_id not in actor.owned_team_ids:
        raise Forbidden("team_id: team owners see only the teams they own")
    return frozenset({team_id})


def resolve_range(
    query: Query, *, now: datetime, reset_day: int, timezone: str
) -> tuple[RangeOut, float]:
    """The query's range as local days and instants, and the current period's length in days."""
    local = zone(timezone)
    today = now.astimezone(local).date()
    current_start, current_end = period_bounds(now, reset_day=reset_day, timezone=timezone)
    period_days = (current_end - current_start).total_seconds() / DAY_SECONDS
    period = query.period or (
        "custom" if query.first_day is not None or query.last_day is not None else "current"
    )
    if period in ("current", "previous"):
        start, end = current_start, current_end
        if period == "previous":
            start, end = period_bounds(
                current_start - timedelta(microseconds=1), reset_day=reset_day, timezone=timezone
            )
        first = start.astimezone(local).date()
        last = end.astimezone(local).date() - timedelta(days=1)
    elif period in LAST_N_DAYS:
        last = today
        first = today - timedelta(days=LAST_N_DAYS[period] - 1)
    elif period == "custom":
        if query.first_day is None:
            raise InvalidInput("from: required for a custom range", field="from")
        if query.last_day is None:
            raise InvalidInput("to: required for a custom range", field="to")
        first, last = query.first_day, query.last_day
        if last < first:
            raise InvalidInput("to: must not be before from", field="to")
        if (last - first).days + 1 > MAX_RANGE_DAYS:
            raise InvalidInput(f"to: a range spans at most {MAX_RANGE_DAYS} days", field="to")
    else:
        choices = ", ".join(PERIOD_LABELS)
        raise InvalidInput(f"period: must be one of {choices}", field="period")
    days = (last - first).days + 1
    label = PERIOD_LABELS[period]
    if period == "custom":
        label = f"{first:%d %b %Y} to {last:%d %b %Y}"
    out = RangeOut(
        period=period,
        label=label,
        first_day=first,
        last_day=last,
        days=days,
        timezone=timezone,
        start=local_midnight(first, local),
        end=local_midnight(last + timedelta(days=1), local),
    )
    return out, period_days


async def _organization(session: AsyncSession, organization_id: int) -> Organization:
    org = await session.get(Organization, organization_id)
    if org is None:
        raise NotFound(f"organization {organization_id} not found")
    return org


async def selection_for(
    session: AsyncSession, *, actor: Actor, query: Query, now: datetime | None = None
) -> Selection:
    """Check the caller's right to see ``query`` and resolve it; raise before any figure."""
    team_ids = team_scope(actor, query.team_id)
    model = query.model.strip() if query.model else None
    if model is not None and len(model) > MAX_MODEL_LENGTH:
        raise InvalidInput(f"model: must be at most {MAX_MODEL_LENGTH} characters", field="model")
    now = now or utcnow()
    org = await _organization(session, actor.organization_id)
    range_, period_days = resolve_range(
        query, now=now, reset_day=org.reset_day, timezone=org.timezone
    )
    return Selection(
        where=repo.Where(organization_id=org.id, team_ids=team_ids, model=model or None),
        range=range_,
        filters=FiltersOut(team_id=query.team_id, model=model or None),
        now=now,
        period_days=period_days,
    )


def check_limit(limit: int | None) -> int | None:
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit: must be between 1 and {MAX_LIMIT}", field="limit")
    return limit


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
    tallies = await repo.requests_by_user(
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
        filters=selection.filters,
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
    tallies = await repo.requests_by_team(session, where=where, start=r.start, end=r.end)
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
    """Tokens per day of the range, stacked by team or by model (the biggest ``series``)."""
    if stack not in ("team", "model"):
        raise InvalidInput("stack: must be team or model", field="stack")
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

    def label(key: Any) -> str:
        return _team_label(key, names) if stack == "team" else str(key)

    out = [
        Series(key=str(key), label=label(key), total=sum(tokens), tokens=tokens)
        for key, tokens in ranked[:series]
    ]
    rest = ranked[series:]
    if rest:
        other = [sum(tokens[i] for _, tokens in rest) for i in range(len(days))]
        label_other = f"Other ({len(rest)} {'teams' if stack == 'team' else 'models'})"
        out.append(Series(key="other", label=label_other, total=sum(other), tokens=other))
    totals = [sum(tokens[i] for tokens in per_key.values()) for i in range(len(days))]
    return UsageOverTimeOut(
        range=r, filters=selection.filters, stack=stack, days=days, totals=totals, series=out
    )


async def by_model(session: AsyncSession, *, selection: Selection) -> ByModelOut:
    """Tokens (prompt and completion) and calls per model in the range."""
    r = selection.range
    rows = await repo.model_totals(
        session, where=selection.where, first_day=r.first_day, last_day=r.last_day
    )
    total_tokens = sum(row[1] for row in rows)
    items = [
        ModelUsage(
            model=model,
            tokens=tokens,
            prompt_tokens=prompt,
            completion_tokens=completion,
            calls=calls,
            share_of_tokens=_share(tokens, total_tokens),
        )
        for model, tokens, prompt, completion, calls in rows
    ]
    items.sort(key=lambda item: (-item.tokens, item.model))
    return ByModelOut(
        range=r,
        filters=selection.filters,
        total_tokens=total_tokens,
        total_calls=sum(row[4] for row in rows),
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
        for status, n, asked, granted in await repo.request_counts(
            session, where=where, start=r.start, end=r.end
        )
    }
    by_status = [
        StatusCount(status=status.value, count=n, requested=asked, granted=granted)
        for status in RequestStatus
        for n, asked, granted in [counts.get(status.value, (0, 0, 0))]
    ]
    decided = sum(item.count for item in by_status if item.status in repo.DECIDED)
    median = await repo.median_decision_seconds(
        session, where=where, start=r.start, end=r.end, decided=decided
    )
    tallies = await repo.requests_by_user(
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
        filters=FiltersOut(team_id=selection.filters.team_id, model=None),
        total=sum(item.count for item in by_status),
        requested=sum(item.requested for item in by_status),
        granted=sum(item.granted for item in by_status),
        decided=decided,
        median_decision_seconds=median,
        by_status=by_status,
        top_requesters=top,
    )


# ---------------------------------------------------------------- forecast


def project(
    *,
    now: datetime,
    since: datetime,
    period_end: datetime,
    used: int,
    remaining: int,
) -> tuple[int, datetime | None, bool]:
    """(burn per day, when remaining reaches zero, whether that is before the reset).

    The burn rate is this period's usage over the time since the period began
    (or since the user joined, if later). Someone already at zero runs out now.
    """
    elapsed = max(now - since, MIN_ELAPSED)
    per_second = used / elapsed.total_seconds()
    burn = round(per_second * DAY_SECONDS)
    if remaining <= 0:
        return burn, now, True
    if per_second <= 0:
        return burn, None, False
    runs_out = now + timedelta(seconds=remaining / per_second)
    if runs_out >= period_end:
        return burn, None, False
    return burn, runs_out, True


@dataclass(frozen=True)
class _Projection:
    runs_out_at: datetime
    share_left: float
    user_id: int
    burn: int
    before_reset: bool
    balance: repo.BalanceRow

    @property
    def order(self) -> tuple[datetime, float, int]:
        """Soonest to run out first; then whoever has the smallest share left."""
        return (self.runs_out_at, self.share_left, self.user_id)


async def forecast(
    session: AsyncSession, *, selection: Selection, limit: int | None = DEFAULT_LIMIT
) -> ForecastOut:
    """Users with usage this period, soonest to run out first.

    Always the current period, whatever the range: it is about balances now.
    The team filter follows each user's current team; the model filter does not apply.
    """
    now, where = selection.now, selection.where
    org = await _organization(session, where.organization_id)
    period_start, period_end = period_bounds(now, reset_day=org.reset_day, timezone=org.timezone)
    rows = await repo.balances_with_usage(session, where=where, now=now, period_start=period_start)
    never = datetime.max.replace(tzinfo=now.tzinfo)
    projections: list[_Projection] = []
    for row in rows:
        available = row.allocation + row.granted + row.adjusted
        remaining = available - row.used - row.reserved
        burn, runs_out, before_reset = project(
            now=now,
            since=row.joined or period_start,
            period_end=period_end,
            used=row.used,
            remaining=remaining,
        )
        share_left = remaining / available if available > 0 else 0.0
        projections.append(
            _Projection(runs_out or never, share_left, row.user_id, burn, before_reset, row)
        )
    projections.sort(key=attrgetter("order"))
    chosen = projections if limit is None else projections[:limit]
    people = await repo.people(session, user_ids=[p.user_id for p in chosen])
    items: list[ForecastItem] = []
    for p in chosen:
        b, person = p.balance, people.get(p.user_id)
        if person is None:
            continue
        available = b.allocation + b.granted + b.adjusted
        items.append(
            ForecastItem(
                user_id=p.user_id,
                name=person.name,
                email=person.email,
                team_name=person.team_name,
                allocation=b.allocation,
                available=available,
                used=b.used,
                remaining=available - b.used - b.reserved,
                burn_per_day=p.burn,
                runs_out_at=None if p.runs_out_at == never else p.runs_out_at,
                before_reset=p.before_reset,
            )
        )
    return ForecastOut(
        period_start=period_start,
        period_end=period_end,
        now=now,
        timezone=org.timezone,
        filters=FiltersOut(team_id=selection.filters.team_id, model=None),
        users_with_usage=len(projections),
        running_out=sum(1 for p in projections if p.before_reset),
        items=items,
    )


# ---------------------------------------------------------------- filter choices


async def filter_choices(
    session: AsyncSession, *, actor: Actor
) -> tuple[list[tuple[int, str]], list[str]]:
    """(teams, models) the caller may filter by: their teams, and every model used."""
    team_scope(actor, None)
    teams = await repo.teams(session, organization_id=actor.organization_id)
    if not actor.is_org_admin:
        teams = [(team_id, name) for team_id, name in teams if team_id in actor.owned_team_ids]
    models = await repo.models_used(session, organization_id=actor.organization_id)
    return teams, models
