"""Proof that the usage rollups equal the sums of the raw events they were built from.

The one place that reads raw events in bulk: an operator's check and the tests'
proof, never a page.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.db import Base
from tokendesk.ledger.periods import zone
from tokendesk.metering.models import (
    ALL_MODELS,
    NO_ENDPOINT,
    NO_TEAM,
    UsageCumulative,
    UsageEndpointDaily,
    UsageEvent,
    UsageModelDaily,
    UsageSeries,
    UsageTeamDaily,
    UsageTeamEndpointDaily,
)
from tokendesk.metering.repository import organization_timezone
from tokendesk.metering.rollups import SUM_FIELDS, SeriesKey


@dataclass(frozen=True)
class Spent:
    """One recorded usage event, as the rollups need it."""

    user_id: int
    team_id: int | None  # the user's team when the tokens were spent
    model: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    occurred_at: datetime
    endpoint: str | None = None
    cached_tokens: int = 0
    reasoning_tokens: int = 0


SPENT_COLUMNS = (
    UsageEvent.user_id,
    UsageEvent.team_id,
    UsageEvent.model,
    UsageEvent.prompt_tokens,
    UsageEvent.completion_tokens,
    UsageEvent.total_tokens,
    UsageEvent.occurred_at,
    UsageEvent.endpoint,
    UsageEvent.cached_tokens,
    UsageEvent.reasoning_tokens,
)


def add_sums(sums: list[int], item: Spent) -> None:
    """Add one event to the sums of SUM_FIELDS (prompt, completion, cached, reasoning,
    total, calls)."""
    sums[0] += item.prompt_tokens
    sums[1] += item.completion_tokens
    sums[2] += item.cached_tokens
    sums[3] += item.reasoning_tokens
    sums[4] += item.total_tokens
    sums[5] += 1


async def differences(session: AsyncSession, *, organization_id: int) -> list[str]:
    """Every way the rollups differ from the sums of the raw events (empty: they agree).

    This is the one place that reads raw events in bulk: an operator's check and
    the tests' proof, never a page. A team deleted since keeps its id in the
    rollups while its events forget it; such rows show up here as differences.
    """
    tz = await organization_timezone(session, organization_id)
    rows = await session.execute(
        select(*SPENT_COLUMNS, UsageEvent.event_id, UsageEvent.day).where(
            UsageEvent.organization_id == organization_id
        )
    )
    spent: list[Spent] = []
    problems: list[str] = []
    local = zone(tz)
    for row in rows:
        columns: tuple[Any, ...] = tuple(row[:-2])
        item = Spent(*columns)
        spent.append(item)
        # The rollups group by the day each event carries: it must be its local date.
        if row.day != item.occurred_at.astimezone(local).date():
            problems.append(f"usage event {row.event_id!r}: day {row.day} is not its local date")
    expected = expected_rollups(spent, tz)
    stored = await stored_rollups(session, organization_id=organization_id)
    for name, want in expected.items():
        have = stored[name]
        for key in sorted(want.keys() | have.keys(), key=repr):
            if want.get(key) != have.get(key):
                problems.append(f"{name} {key}: raw {want.get(key)} != rollup {have.get(key)}")
    return problems


Rollups = dict[str, dict[tuple[Any, ...], tuple[Any, ...]]]


def expected_rollups(spent: Iterable[Spent], tz: str) -> Rollups:
    """What every rollup must hold for these events, computed the slow, obvious way."""
    local = zone(tz)
    team_daily: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * len(SUM_FIELDS))
    model_daily: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * len(SUM_FIELDS))
    team_endpoint_daily: dict[tuple[Any, ...], list[int]] = defaultdict(
        lambda: [0] * len(SUM_FIELDS)
    )
    endpoint_daily: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * len(SUM_FIELDS))
    per_day: dict[SeriesKey, dict[date, list[int]]] = defaultdict(
        lambda: defaultdict(lambda: [0, 0])
    )
    for item in spent:
        day = item.occurred_at.astimezone(local).date()
        team = NO_TEAM if item.team_id is None else item.team_id
        add_sums(team_daily[(day, team, item.model)], item)
        add_sums(model_daily[(day, item.model)], item)
        endpoint = NO_ENDPOINT if item.endpoint is None else item.endpoint
        add_sums(team_endpoint_daily[(day, team, item.model, endpoint)], item)
        add_sums(endpoint_daily[(day, item.model, endpoint)], item)
        for model in (item.model, ALL_MODELS):
            sums = per_day[(item.user_id, team, model)][day]
            sums[0] += item.total_tokens
            sums[1] += 1
    cumulative: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    series: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for key, days in per_day.items():
        tokens = calls = 0
        for day in sorted(days):
            tokens += days[day][0]
            calls += days[day][1]
            cumulative[(*key, day)] = (tokens, calls)
        series[key] = (min(days), max(days), tokens, calls)
    return {
        "usage_series": series,
        "usage_team_daily": {key: tuple(sums) for key, sums in team_daily.items()},
        "usage_model_daily": {key: tuple(sums) for key, sums in model_daily.items()},
        "usage_team_endpoint_daily": {
            key: tuple(sums) for key, sums in team_endpoint_daily.items()
        },
        "usage_endpoint_daily": {key: tuple(sums) for key, sums in endpoint_daily.items()},
        "usage_cumulative": cumulative,
    }


async def stored_rollups(session: AsyncSession, *, organization_id: int) -> Rollups:
    """The rollup tables of one organization, keyed like :func:`expected_rollups`."""
    t, m, s, c = UsageTeamDaily, UsageModelDaily, UsageSeries, UsageCumulative
    te, e = UsageTeamEndpointDaily, UsageEndpointDaily
    series_key = (s.user_id, s.team_id, s.model)
    return {
        "usage_team_daily": await _keyed(
            session,
            select(t.day, t.team_id, t.model, *_sums(t)).where(
                t.organization_id == organization_id
            ),
            key_length=3,
        ),
        "usage_model_daily": await _keyed(
            session,
            select(m.day, m.model, *_sums(m)).where(m.organization_id == organization_id),
            key_length=2,
        ),
        "usage_team_endpoint_daily": await _keyed(
            session,
            select(te.day, te.team_id, te.model, te.endpoint, *_sums(te)).where(
                te.organization_id == organization_id
            ),
            key_length=4,
        ),
        "usage_endpoint_daily": await _keyed(
            session,
            select(e.day, e.model, e.endpoint, *_sums(e)).where(
                e.organization_id == organization_id
            ),
            key_length=3,
        ),
        "usage_series": await _keyed(
            session,
            select(*series_key, s.first_day, s.last_day, s.tokens, s.calls).where(
                s.organization_id == organization_id
            ),
            key_length=3,
        ),
        "usage_cumulative": await _keyed(
            session,
            select(*series_key, c.day, c.tokens, c.calls)
            .join(c, c.series_id == s.id)
            .where(s.organization_id == organization_id),
            key_length=4,
        ),
    }


def _sums(daily: type[Base]) -> list[Any]:
    return [daily.__table__.c[f] for f in SUM_FIELDS]


async def _keyed(
    session: AsyncSession, statement: Select[*tuple[Any, ...]], *, key_length: int
) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """The rows as a mapping from their first ``key_length`` columns to the rest."""
    rows = await session.execute(statement)
    return {tuple(row[:key_length]): tuple(row[key_length:]) for row in rows}
