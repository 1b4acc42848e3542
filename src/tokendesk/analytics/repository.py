"""All analytics SQL: rollups, token requests and balances, never raw usage events.

Every query is bounded by the size of its answer, not by the number of events:
users' usage over a range comes from running totals (two index lookups per
user), charts and breakdowns from per-day team and model rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TypeAlias

from sqlalchemy import (
    ColumnElement,
    case,
    func,
    literal,
    select,
    text,
)
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Executable

from tokendesk.accounts.models import Team, User
from tokendesk.db import dialect_of
from tokendesk.ledger.models import Balance
from tokendesk.metering.models import (
    ALL_MODELS,
    NO_TEAM,
    UsageCumulative,
    UsageEndpointDaily,
    UsageModelDaily,
    UsageSeries,
    UsageTeamDaily,
    UsageTeamEndpointDaily,
)

AnyRow: TypeAlias = Row[*tuple[Any, ...]]

# Ids per IN list: well inside SQLite's and asyncpg's bound-parameter limits.
CHUNK = 5_000


@dataclass(frozen=True)
class Where:
    """What a query may see: one organization, some or all teams, one model or all, one
    gateway endpoint or all."""

    organization_id: int
    # None: every team (and users without one); otherwise these team ids (0: no team).
    team_ids: frozenset[int] | None
    model: str | None
    # None: every endpoint; NO_ENDPOINT: usage reported through the usage API.
    endpoint: str | None = None


@dataclass(frozen=True)
class SeriesUsage:
    user_id: int
    team_id: int
    tokens: int


async def rows_of(session: AsyncSession, statement: Executable) -> Sequence[AnyRow]:
    """Run a read as plain Core: thousands of result rows skip the ORM's per-row work."""
    connection = await session.connection()
    return (await connection.execute(statement)).all()


def chunks(values: Sequence[int]) -> list[Sequence[int]]:
    return [values[start : start + CHUNK] for start in range(0, len(values), CHUNK)]


def team_clause(column: Any, team_ids: frozenset[int] | None) -> list[ColumnElement[bool]]:
    if team_ids is None:
        return []
    return [column.in_(sorted(team_ids))]


async def plan_each_query(session: AsyncSession) -> None:
    """Have PostgreSQL plan every analytics query for its actual parameters.

    Prepared statements switch to a generic plan after five runs; for these
    queries it guesses badly (a seq scan testing every id per row instead of an
    index lookup, many times slower). Planning is cheap next to that, and
    ``SET LOCAL`` ends with the transaction.
    """
    if dialect_of(session) == "postgresql":
        await session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))


# ---------------------------------------------------------------- usage


def _over_range(column: str, first_day: date, last_day: date) -> Any:
    """A series' ``column`` (tokens or calls) over [first_day, last_day].

    That is its running total on the last day minus the one before the first day;
    a range that ends after the series' last day needs no lookup for the former
    (the series row holds it), one that starts before its first day none for the latter.
    """
    c, s = UsageCumulative, UsageSeries

    def last_on_or_before(day_clause: ColumnElement[bool]) -> Any:
        value = (
            select(getattr(c, column))
            .where(c.series_id == s.id, day_clause)
            .order_by(c.day.desc())
            .limit(1)
            .correlate(s)
            .scalar_subquery()
        )
        return func.coalesce(value, 0)

    through_end = case(
        (s.last_day <= last_day, getattr(s, column)), else_=last_on_or_before(c.day <= last_day)
    )
    before_start = case(
        (s.first_day >= first_day, literal(0)), else_=last_on_or_before(c.day < first_day)
    )
    return through_end - before_start


def _series_in(where: Where, first_day: date, last_day: date) -> list[ColumnElement[bool]]:
    return [
        UsageSeries.organization_id == where.organization_id,
        # A series whose usage all lies outside the range has nothing in it.
        UsageSeries.first_day <= last_day,
        UsageSeries.last_day >= first_day,
        UsageSeries.model == (where.model or ALL_MODELS),
        *team_clause(UsageSeries.team_id, where.team_ids),
    ]


async def series_usage(
    session: AsyncSession, *, where: Where, first_day: date, last_day: date
) -> list[SeriesUsage]:
    """Tokens of every (user, team) series over [first_day, last_day], unused ones left out.

    Each series costs at most two index lookups whatever the range's length: its
    running total on the last day of the range minus the one before the first day.
    """
    tokens = _over_range("tokens", first_day, last_day)
    rows = await rows_of(
        session,
        select(UsageSeries.user_id, UsageSeries.team_id, tokens).where(
            *_series_in(where, first_day, last_day)
        ),
    )
    # Filtered here, not in SQL: a WHERE on the difference would run the lookups twice.
    return [SeriesUsage(user_id, team_id, int(t)) for user_id, team_id, t in rows if t]


async def calls_by_user(
    session: AsyncSession, *, where: Where, first_day: date, last_day: date, user_ids: Sequence[int]
) -> dict[int, int]:
    """Calls over [first_day, last_day] of these users (asked only for the users shown)."""
    calls = _over_range("calls", first_day, last_day)
    out: dict[int, int] = {}
    for chunk in chunks(sorted(user_ids)):
        rows = await rows_of(
            session,
            select(UsageSeries.user_id, calls).where(
                *_series_in(where, first_day, last_day), UsageSeries.user_id.in_(chunk)
            ),
        )
        for user_id, count in rows:
            out[user_id] = out.get(user_id, 0) + int(count)
    return out


def _daily_source(
    where: Where, *, by_team: bool = False, by_endpoint: bool = False
) -> tuple[Any, list[ColumnElement[bool]]]:
    """The smallest per-day table that answers ``where``, grouped by team or by endpoint
    if asked, and its filter: only endpoints need the endpoint rollup."""
    table: Any
    whole = where.team_ids is None and not by_team
    if by_endpoint or where.endpoint is not None:
        table = UsageEndpointDaily if whole else UsageTeamEndpointDaily
    else:
        table = UsageModelDaily if whole else UsageTeamDaily
    clauses: list[ColumnElement[bool]] = [table.organization_id == where.organization_id]
    if not whole:
        clauses.extend(team_clause(table.team_id, where.team_ids))
    if where.model is not None:
        clauses.append(table.model == where.model)
    if where.endpoint is not None:
        clauses.append(table.endpoint == where.endpoint)
    return table, clauses


async def daily_by(
    session: AsyncSession, *, where: Where, first_day: date, last_day: date, stack: str
) -> list[tuple[date, Any, int]]:
    """(day, team id, model or endpoint, tokens) for every day of the range with usage,
    ``stack`` saying which of the three."""
    table, clauses = _daily_source(where, by_team=stack == "team", by_endpoint=stack == "endpoint")
    key = getattr(table, "team_id" if stack == "team" else stack)
    rows = await rows_of(
        session,
        select(table.day, key, func.sum(table.total_tokens))
        .where(*clauses, table.day >= first_day, table.day <= last_day)
        .group_by(table.day, key),
    )
    return [(day, k, int(tokens)) for day, k, tokens in rows]


async def team_totals(
    session: AsyncSession, *, where: Where, first_day: date, last_day: date
) -> dict[int, tuple[int, int]]:
    """team id -> (tokens, calls) over the range."""
    t, clauses = _daily_source(where, by_team=True)
    rows = await rows_of(
        session,
        select(t.team_id, func.sum(t.total_tokens), func.sum(t.calls))
        .where(*clauses, t.day >= first_day, t.day <= last_day)
        .group_by(t.team_id),
    )
    return {team_id: (int(tokens), int(calls)) for team_id, tokens, calls in rows}


@dataclass(frozen=True)
class Totals:
    """The sums of a breakdown's row: tokens debited, their kinds, and calls."""

    key: str
    tokens: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    calls: int


async def _totals_by(
    session: AsyncSession,
    table: Any,
    clauses: list[ColumnElement[bool]],
    key: Any,
    first_day: date,
    last_day: date,
) -> list[Totals]:
    rows = await rows_of(
        session,
        select(
            key,
            func.sum(table.total_tokens),
            func.sum(table.prompt_tokens),
            func.sum(table.completion_tokens),
            func.sum(table.cached_tokens),
            func.sum(table.reasoning_tokens),
            func.sum(table.calls),
        )
        .where(*clauses, table.day >= first_day, table.day <= last_day)
        .group_by(key),
    )
    return [Totals(k, *(int(value) for value in sums)) for k, *sums in rows]


async def model_totals(
    session: AsyncSession, *, where: Where, first_day: date, last_day: date
) -> list[Totals]:
    """Each model's totals over the range."""
    table, clauses = _daily_source(where)
    return await _totals_by(session, table, clauses, table.model, first_day, last_day)


async def endpoint_totals(
    session: AsyncSession, *, where: Where, first_day: date, last_day: date
) -> list[Totals]:
    """Each endpoint's totals over the range (NO_ENDPOINT: reported through the usage API)."""
    table, clauses = _daily_source(where, by_endpoint=True)
    return await _totals_by(session, table, clauses, table.endpoint, first_day, last_day)


async def models_used(session: AsyncSession, *, organization_id: int) -> list[str]:
    rows = await session.scalars(
        select(UsageModelDaily.model)
        .where(UsageModelDaily.organization_id == organization_id)
        .distinct()
        .order_by(UsageModelDaily.model)
    )
    return list(rows)


# ---------------------------------------------------------------- people and teams


@dataclass(frozen=True)
class Person:
    user_id: int
    name: str
    email: str
    team_id: int | None
    team_name: str | None
    allocation: int


async def people(session: AsyncSession, *, user_ids: Sequence[int]) -> dict[int, Person]:
    """Name, email, current team and this period's allocation of these users."""
    out: dict[int, Person] = {}
    for chunk in chunks(list(user_ids)):
        rows = await rows_of(
            session,
            select(
                User.id,
                User.name,
                User.email,
                User.team_id,
                Team.name,
                func.coalesce(Balance.allocation, 0),
            )
            .outerjoin(Team, Team.id == User.team_id)
            .outerjoin(Balance, Balance.user_id == User.id)
            .where(User.id.in_(chunk)),
        )
        out.update({row[0]: Person(*row) for row in rows})
    return out


async def teams(session: AsyncSession, *, organization_id: int) -> list[tuple[int, str]]:
    rows = await rows_of(
        session,
        select(Team.id, Team.name)
        .where(Team.organization_id == organization_id)
        .order_by(Team.name),
    )
    return [(team_id, name) for team_id, name in rows]


async def team_members(
    session: AsyncSession, *, organization_id: int
) -> dict[int, tuple[int, int]]:
    """Current team id (0: none) -> (members, sum of this period's allocations)."""
    team = func.coalesce(User.team_id, NO_TEAM)
    rows = await rows_of(
        session,
        select(team, func.count(), func.coalesce(func.sum(Balance.allocation), 0))
        .outerjoin(Balance, Balance.user_id == User.id)
        .where(User.organization_id == organization_id, User.is_active.is_(True))
        .group_by(team),
    )
    return {team_id: (int(count), int(allocation)) for team_id, count, allocation in rows}


# ---------------------------------------------------------------- balances


@dataclass(frozen=True)
class BalanceRow:
    user_id: int
    allocation: int
    granted: int
    adjusted: int
    used: int
    reserved: int
    # When the user joined, if that was after the period began.
    joined: datetime | None
    # Their first day with usage this period (organization-local), asked only when they
    # joined after the period began: usage reported for days before they joined.
    first_day: date | None


async def balances_with_usage(
    session: AsyncSession,
    *,
    where: Where,
    now: datetime,
    period_start: datetime,
    period_first_day: date,
) -> list[BalanceRow]:
    """Current-period balances with some usage, of users whose current team is in scope."""
    clauses = [
        Balance.organization_id == where.organization_id,
        # A period that has ended but not rolled over yet has no usage this period.
        Balance.period_end > now,
        Balance.used > 0,
    ]
    if where.team_ids is not None:
        clauses.append(func.coalesce(User.team_id, NO_TEAM).in_(sorted(where.team_ids)))
    joined_late = User.created_at > period_start
    joined = case((joined_late, User.created_at))
    # The all-models series hold every day with usage: a seek per series on their key.
    first_day = (
        select(func.min(UsageCumulative.day))
        .join(UsageSeries, UsageSeries.id == UsageCumulative.series_id)
        .where(
            UsageSeries.organization_id == where.organization_id,
            UsageSeries.user_id == Balance.user_id,
            UsageSeries.model == ALL_MODELS,
            UsageCumulative.day >= period_first_day,
        )
        .scalar_subquery()
    )
    rows = await rows_of(
        session,
        select(
            Balance.user_id,
            Balance.allocation,
            Balance.granted,
            Balance.adjusted,
            Balance.used,
            Balance.reserved,
            joined,
            case((joined_late, first_day)),
        )
        .join(User, User.id == Balance.user_id)
        .where(*clauses),
    )
    return [BalanceRow(*tuple(row)) for row in rows]
