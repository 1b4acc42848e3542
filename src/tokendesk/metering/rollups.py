"""Usage rollups: the sums analytics reads so it never scans raw usage events.

Written by :func:`add` in the same transaction as the events they sum, with a
fixed handful of set-based statements per batch whatever its size; the database
groups the new events itself (``INSERT ... SELECT ... GROUP BY ... ON CONFLICT
DO UPDATE``), so no per-event or per-group work happens in Python:

- ``usage_team_daily`` and ``usage_model_daily``: per day and team/model, a few
  hundred rows a day whatever the head count, for charts and breakdowns;
- ``usage_team_endpoint_daily`` and ``usage_endpoint_daily``: the same with the
  gateway endpoint too, for the figures that split usage by API;
- ``usage_series`` + ``usage_cumulative``: running totals per user, team and
  model (and all models), so any user's usage over any range is two lookups.

There is no rollup per day and user: nothing reads one, and it would be the
largest table written on every batch.

Days are calendar dates in the organization's time zone, because periods start
at local midnight: a Berlin period is then a whole number of rollup days. Each
event carries its day from the moment it is recorded.

Rows are written in key order everywhere: on PostgreSQL concurrent batches then
lock shared rows (an organization's day and model) in one order and never
deadlock. Per-user rows (series and running totals) need no order of their
own: the batch already holds their users' balance rows.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date
from functools import cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    Date,
    String,
    bindparam,
    case,
    func,
    literal,
    literal_column,
    select,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.db import Base, dialect_of, in_list, listed, run_core
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
from tokendesk.metering.repository import dialect_insert, table

SUM_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "total_tokens",
    "calls",
)

SeriesKey = tuple[int, int, str]  # (user_id, team_id, model)

_events, _series, _cumulative = table(UsageEvent), table(UsageSeries), table(UsageCumulative)
# What each rollup groups by, as columns of the events: team 0 stands for "no team".
# A literal, not a bound parameter: SQLite then sees that ORDER BY repeats GROUP BY
# and skips a second sort (each mention of a parameter is a parameter of its own).
_team = func.coalesce(_events.c.team_id, literal_column(str(NO_TEAM), BigInteger))
_KEYS: dict[str, Any] = {
    "day": _events.c.day,
    "team_id": _team,
    "model": _events.c.model,
    "endpoint": func.coalesce(_events.c.endpoint, literal_column(f"'{NO_ENDPOINT}'", String)),
}
_SUMS: dict[type[Base], tuple[str, ...]] = {
    UsageTeamDaily: ("day", "team_id", "model"),
    UsageModelDaily: ("day", "model"),
    UsageTeamEndpointDaily: ("day", "team_id", "model", "endpoint"),
    UsageEndpointDaily: ("day", "model", "endpoint"),
}


async def add(
    session: AsyncSession,
    *,
    usage_event_ids: Sequence[int],
    days: Collection[date],
) -> None:
    """Add these just-inserted (never replayed) events to every rollup.

    The rollups are built from the stored rows themselves, so they carry exactly
    what the events say: their day, model, token counts and team at the time of
    use. ``days`` are the events' days, which tell whether the running totals can
    take their quick path.
    """
    if not usage_event_ids:
        return
    dialect = dialect_of(session)
    batch = {"ids": listed(dialect, usage_event_ids)}
    for model in _SUMS:
        await run_core(session, _add_sums(dialect, model), batch)
    rows = await run_core(session, _add_to_series(dialect), batch)
    last_days = {series_id: last_day for series_id, last_day in rows}
    # Series by id from here on: joining events to series by key leaves PostgreSQL's
    # planner free to scan every series, or every event of the organization.
    series = {"series": listed(dialect, last_days)}
    if len(days) == 1 and set(last_days.values()) <= set(days):
        # The usual case: every event on one day, the last day of each series it touched.
        await run_core(session, _running_totals_at_last_day(dialect), series)
    else:
        # The batch spans days, or some series have usage after its day (a late report).
        groups = await run_core(session, _groups(dialect), {**batch, **series})
        await _add_running_totals(session, [_Group(*row) for row in groups])


@cache
def _add_sums(dialect: str, model: type[Base]) -> Any:
    """Add the events' sums, grouped by the rollup's keys within their organization."""
    keys = _SUMS[model]
    target = table(model)
    group = [_events.c.organization_id, *(_KEYS[key] for key in keys)]
    source = (
        select(
            *group,
            *(func.sum(_events.c[name]) for name in SUM_FIELDS[:-1]),
            func.count(),
        )
        .where(in_list(dialect, _events.c.id))
        .group_by(*group)
        .order_by(*group)
    )
    stmt = dialect_insert(dialect)(target).from_select(
        ["organization_id", *keys, *SUM_FIELDS], source
    )
    return stmt.on_conflict_do_update(
        index_elements=["organization_id", *keys],
        set_={name: target.c[name] + stmt.excluded[name] for name in SUM_FIELDS},
    )


@cache
def _add_to_series(dialect: str) -> Any:
    """Add the events to their series' totals and days, creating missing series.

    Returns the id and (new) last day of every series the events touched.
    """
    s, e = _series, _events

    def grouped(model: Any, *group: Any) -> Any:
        return (
            select(
                e.c.organization_id,
                e.c.user_id,
                _team,
                model,
                func.min(e.c.day),
                func.max(e.c.day),
                func.sum(e.c.total_tokens),
                func.count(),
            )
            .where(in_list(dialect, e.c.id))
            .group_by(e.c.organization_id, e.c.user_id, _team, *group)
        )

    source = union_all(grouped(e.c.model, e.c.model), grouped(literal(ALL_MODELS)))
    stmt = dialect_insert(dialect)(s).from_select(
        [
            "organization_id",
            "user_id",
            "team_id",
            "model",
            "first_day",
            "last_day",
            "tokens",
            "calls",
        ],
        source,
    )
    return stmt.on_conflict_do_update(
        index_elements=["organization_id", "model", "team_id", "user_id"],
        set_={
            "tokens": s.c.tokens + stmt.excluded.tokens,
            "calls": s.c.calls + stmt.excluded.calls,
            "first_day": case(
                (stmt.excluded.first_day < s.c.first_day, stmt.excluded.first_day),
                else_=s.c.first_day,
            ),
            "last_day": case(
                (stmt.excluded.last_day > s.c.last_day, stmt.excluded.last_day),
                else_=s.c.last_day,
            ),
        },
    ).returning(s.c.id, s.c.last_day)


@cache
def _running_totals_at_last_day(dialect: str) -> Any:
    """Make each series' running total on its last day equal its totals.

    Right when a batch added usage on the last day of every series it touched
    (and on no other day), that running total is the whole series, which the
    series row now holds: one statement creates or overwrites these rows.
    """
    s = _series
    source = (
        select(s.c.id, s.c.last_day, s.c.tokens, s.c.calls)
        .where(in_list(dialect, s.c.id, "series"))
        .order_by(s.c.id)
    )
    stmt = dialect_insert(dialect)(_cumulative).from_select(
        ["series_id", "day", "tokens", "calls"], source
    )
    return stmt.on_conflict_do_update(
        index_elements=["series_id", "day"],
        set_={"tokens": stmt.excluded.tokens, "calls": stmt.excluded.calls},
    )


@cache
def _groups(dialect: str) -> Any:
    """The events' tokens and calls per series and day, in series and day order."""
    s, e = _series, _events
    return (
        select(s.c.id, e.c.day, func.sum(e.c.total_tokens), func.count())
        .select_from(e)
        .join(
            s,
            (s.c.organization_id == e.c.organization_id)
            & (s.c.user_id == e.c.user_id)
            & (s.c.team_id == _team)
            & s.c.model.in_([e.c.model, literal(ALL_MODELS)]),
        )
        .where(in_list(dialect, e.c.id), in_list(dialect, s.c.id, "series"))
        .group_by(s.c.id, e.c.day)
        .order_by(s.c.id, e.c.day)
    )


@dataclass(frozen=True, order=True)
class _Group:
    series_id: int
    day: date
    tokens: int
    calls: int


async def _add_running_totals(session: AsyncSession, groups: Sequence[_Group]) -> None:
    """Add each group's tokens and calls to its day's running total and every later one.

    The general path, for batches over several days or with usage for a day
    before a series' last one (late reports, backfills). Later rows grow first;
    then each group's own row is created from the last earlier row, or grows if
    it exists. Own rows go in day order, so a new row built on an earlier day of
    the same batch already includes that day.
    """
    if not groups:
        return
    c = _cumulative
    series = bindparam("s", type_=BigInteger)
    day = bindparam("d", type_=Date)
    tokens = bindparam("dt", type_=BigInteger)
    calls = bindparam("dc", type_=BigInteger)

    def params(items: Sequence[_Group]) -> list[dict[str, Any]]:
        return [{"s": g.series_id, "d": g.day, "dt": g.tokens, "dc": g.calls} for g in items]

    await run_core(
        session,
        update(c)
        .where(c.c.series_id == series, c.c.day > day)
        .values(tokens=c.c.tokens + tokens, calls=c.c.calls + calls),
        params(groups),
    )

    def before(column: Any) -> Any:
        return (
            select(column)
            .where(c.c.series_id == series, c.c.day < day)
            .order_by(c.c.day.desc())
            .limit(1)
            .scalar_subquery()
        )

    source = select(
        series,
        day,
        func.coalesce(before(c.c.tokens), 0) + tokens,
        func.coalesce(before(c.c.calls), 0) + calls,
    )
    stmt = dialect_insert(dialect_of(session))(c).from_select(
        ["series_id", "day", "tokens", "calls"], source
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["series_id", "day"],
        set_={"tokens": c.c.tokens + tokens, "calls": c.c.calls + calls},
    )
    await run_core(session, stmt, params(groups))
