"""What a caller may see and over which days: the checked form of an analytics query.

Scope is decided here, not in routes: org admins and super admins see the
active organization; team owners see usage spent in the teams they own (a
rollup row's team is the user's team at the time of use), requests made from
those teams, and the forecast of their current members; members see nothing.

Ranges are whole calendar days in the organization's time zone. Rollup days
are local days too, so "this period" is exact even where periods start at
local midnight (Europe/Berlin) rather than at UTC midnight.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.actor import Actor
from tokendesk.accounts.lookups import get_organization
from tokendesk.analytics import repository as repo
from tokendesk.analytics.schemas import PERIOD_LABELS, FiltersOut, RangeOut
from tokendesk.db import utcnow
from tokendesk.errors import Forbidden, InvalidInput
from tokendesk.gateway.model_config import APIS
from tokendesk.ledger.periods import local_midnight, period_bounds, zone
from tokendesk.metering.models import NO_ENDPOINT

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
MAX_RANGE_DAYS = 366
MAX_MODEL_LENGTH = 200
# How analytics names the usage reported through the usage API, which has no endpoint.
REPORTED = "reported"
# What the endpoint filter takes: the gateway's APIs, and usage reported to the usage API.
ENDPOINTS = (*APIS, REPORTED)
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
    endpoint: str | None = None


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
    if not actor.can_manage_team(team_id):
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
    out = RangeOut(
        period=period,
        label=PERIOD_LABELS[period],
        first_day=first,
        last_day=last,
        days=days,
        timezone=timezone,
        start=local_midnight(first, local),
        end=local_midnight(last + timedelta(days=1), local),
    )
    return out, period_days


async def selection_for(
    session: AsyncSession, *, actor: Actor, query: Query, now: datetime | None = None
) -> Selection:
    """Check the caller's right to see ``query`` and resolve it; raise before any figure."""
    team_ids = team_scope(actor, query.team_id)
    model = query.model.strip() if query.model else None
    if model is not None and len(model) > MAX_MODEL_LENGTH:
        raise InvalidInput(f"model: must be at most {MAX_MODEL_LENGTH} characters", field="model")
    endpoint = query.endpoint.strip() if query.endpoint else None
    if endpoint is not None and endpoint not in ENDPOINTS:
        raise InvalidInput(f"endpoint: must be one of {', '.join(ENDPOINTS)}", field="endpoint")
    now = now or utcnow()
    await repo.plan_each_query(session)
    org = await get_organization(session, actor.organization_id)
    range_, period_days = resolve_range(
        query, now=now, reset_day=org.reset_day, timezone=org.timezone
    )
    return Selection(
        where=repo.Where(
            organization_id=org.id,
            team_ids=team_ids,
            model=model or None,
            endpoint=None if endpoint is None else stored_endpoint(endpoint),
        ),
        range=range_,
        filters=FiltersOut(team_id=query.team_id, model=model or None, endpoint=endpoint),
        now=now,
        period_days=period_days,
    )


def stored_endpoint(endpoint: str) -> str:
    """The endpoint as the rollups key it: reported usage has none."""
    return NO_ENDPOINT if endpoint == REPORTED else endpoint


def shown_endpoint(stored: str) -> str:
    """The endpoint as analytics names it (and the endpoint filter takes it)."""
    return REPORTED if stored == NO_ENDPOINT else stored


async def filter_choices(
    session: AsyncSession, *, actor: Actor
) -> tuple[list[tuple[int, str]], list[str]]:
    """(teams, models) the caller may filter by: their teams, and every model used; the
    endpoints are always ``ENDPOINTS``."""
    team_scope(actor, None)
    teams = await repo.teams(session, organization_id=actor.organization_id)
    teams = [(team_id, name) for team_id, name in teams if actor.can_manage_team(team_id)]
    models = await repo.models_used(session, organization_id=actor.organization_id)
    return teams, models
