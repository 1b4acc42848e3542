"""Usage rollups: the sums analytics reads so it never scans raw usage events.

Written by :func:`add` in the same transaction as the events they sum, with a
fixed handful of set-based statements per batch:

- ``usage_daily``: per day, user, team and model (the finest rollup);
- ``usage_team_daily`` and ``usage_model_daily``: per day and team/model, a few
  hundred rows a day whatever the head count, for charts and breakdowns;
- ``usage_series`` + ``usage_cumulative``: running totals per user, team and
  model (and all models), so any user's usage over any range is two lookups.

Days are calendar dates in the organization's time zone, because periods start
at local midnight: a Berlin period is then a whole number of rollup days.

Row order is sorted by key everywhere: on PostgreSQL concurrent batches then
lock shared rows (an organization's day and model) in one order and never
deadlock. Running totals need no lock of their own: each series belongs to one
user, whose balance row the batch already holds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, cast

from sqlalchemy import BigInteger, Date, Table, bindparam, case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.models import Organization
from tokendesk.db import Base
from tokendesk.ledger.periods import zone
from tokendesk.metering.models import (
    ALL_MODELS,
    NO_TEAM,
    UsageCumulative,
    UsageDaily,
    UsageEvent,
    UsageModelDaily,
    UsageSeries,
    UsageTeamDaily,
)

SUM_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens", "calls")


@dataclass(frozen=True)
class Spent:
    """One newly recorded usage event, as the rollups need it."""

    user_id: int
    team_id: int | None  # the user's team when the tokens were spent
    model: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    occurred_at: datetime


SPENT_COLUMNS = (
    UsageEvent.user_id,
    UsageEvent.team_id,
    UsageEvent.model,
    UsageEvent.prompt_tokens,
    UsageEvent.completion_tokens,
    UsageEvent.total_tokens,
    UsageEvent.occurred_at,
)
# Ids per IN list: well inside SQLite's and asyncpg's bound-parameter limits.
CHUNK = 10_000

SeriesKey = tuple[int, int, str]  # (user_id, team_id, model)


def _table(model: type[Base]) -> Table:
    return cast(Table, model.__table__)


def _insert(session: AsyncSession) -> Any:
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert
    if name == "sqlite":
        return sqlite.insert
    raise NotImplementedError(f"usage rollups do not support the {name} dialect")


async def organization_timezone(session: AsyncSession, organization_id: int) -> str:
    tz = await session.scalar(
        select(Organization.timezone).where(Organization.id == organization_id)
    )
    return tz or "UTC"


def add_sums(sums: list[int], item: Spent) -> None:
    """Add one event to [prompt, completion, total, calls]."""
    sums[0] += item.prompt_tokens
    sums[1] += item.completion_tokens
    sums[2] += item.total_tokens
    sums[3] += 1


def _rows(
    groups: dict[tuple[Any, ...], list[int]], names: Sequence[str], **fixed: Any
) -> list[dict[str, Any]]:
    """Group sums as insert rows, sorted by key so every batch locks rows in one order."""
    return [
        {**fixed, **dict(zip(names, key, strict=True)), **dict(zip(SUM_FIELDS, sums, strict=True))}
        for key, sums in sorted(groups.items())
    ]


async def _upsert_sums(
    session: AsyncSession, model: type[Base], keys: Sequence[str], rows: list[dict[str, Any]]
) -> None:
    if not rows:
        return
    table = _table(model)
    stmt = _insert(session)(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(keys),
        set_={name: table.c[name] + stmt.excluded[name] for name in SUM_FIELDS},
    )
    await session.execute(stmt, rows)


async def add(
    session: AsyncSession, *, organization_id: int, usage_event_ids: Sequence[int]
) -> None:
    """Add these just-inserted (never replayed) events to every rollup.

    The rollups are built from the stored rows themselves, so they carry exactly
    what the events say: their time, model, token counts and team at the time of use.
    """
    spent: list[Spent] = []
    tz = "UTC"
    for start in range(0, len(usage_event_ids), CHUNK):
        rows = await session.execute(
            # The organization's time zone rides along: one statement, not two.
            select(*SPENT_COLUMNS, Organization.timezone)
            .join(Organization, Organization.id == UsageEvent.organization_id)
            .where(UsageEvent.id.in_(usage_event_ids[start : start + CHUNK]))
        )
        for row in rows:
            spent.append(Spent(*row[:-1]))
            tz = row[-1]
    if spent:
        await _add_spent(session, organization_id=organization_id, spent=spent, tz=tz)


async def _add_spent(
    session: AsyncSession, *, organization_id: int, spent: Sequence[Spent], tz: str
) -> None:
    local = zone(tz)
    daily: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    team_daily: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    model_daily: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    series_days: dict[tuple[SeriesKey, date], list[int]] = defaultdict(lambda: [0, 0])
    for item in spent:
        day = item.occurred_at.astimezone(local).date()
        team = NO_TEAM if item.team_id is None else item.team_id
        add_sums(daily[(day, item.user_id, team, item.model)], item)
        add_sums(team_daily[(day, team, item.model)], item)
        add_sums(model_daily[(day, item.model)], item)
        for model in (item.model, ALL_MODELS):
            totals = series_days[((item.user_id, team, model), day)]
            totals[0] += item.total_tokens
            totals[1] += 1
    org = {"organization_id": organization_id}
    await _upsert_sums(
        session,
        UsageDaily,
        ("organization_id", "day", "user_id", "team_id", "model"),
        _rows(daily, ("day", "user_id", "team_id", "model"), **org),
    )
    await _upsert_sums(
        session,
        UsageTeamDaily,
        ("organization_id", "day", "team_id", "model"),
        _rows(team_daily, ("day", "team_id", "model"), **org),
    )
    await _upsert_sums(
        session,
        UsageModelDaily,
        ("organization_id", "day", "model"),
        _rows(model_daily, ("day", "model"), **org),
    )
    spans: dict[SeriesKey, _Span] = {}
    for (key, day), (tokens, calls) in series_days.items():
        span = spans.get(key)
        spans[key] = (
            _Span(day, day, tokens, calls) if span is None else span.add(day, tokens, calls)
        )
    series = await _series(session, organization_id, spans)
    groups: list[_Group] = []
    for (key, day), (tokens, calls) in series_days.items():
        series_id, last_day = series[key]
        later_rows = last_day is not None and day < last_day
        groups.append(_Group(series_id, day, tokens, calls, later_rows))
    await _add_running_totals(session, sorted(groups))


@dataclass(frozen=True, order=True)
class _Group:
    series_id: int
    day: date
    tokens: int
    calls: int
    # Usage for a day before the series' last one: every later running total grows too.
    later_rows: bool


@dataclass(frozen=True)
class _Span:
    """What a batch adds to one series: its first and last day, tokens and calls."""

    first_day: date
    last_day: date
    tokens: int
    calls: int

    def add(self, day: date, tokens: int, calls: int) -> _Span:
        return _Span(
            min(self.first_day, day),
            max(self.last_day, day),
            self.tokens + tokens,
            self.calls + calls,
        )


async def _series(
    session: AsyncSession, organization_id: int, spans: dict[SeriesKey, _Span]
) -> dict[SeriesKey, tuple[int, date | None]]:
    """Add each span to its series' totals, creating missing series.

    Returns each series' id and its last day before this batch (None if new).
    """
    s = _table(UsageSeries)
    user_ids = sorted({user_id for user_id, _, _ in spans})

    async def known() -> dict[SeriesKey, tuple[int, date | None]]:
        rows = await session.execute(
            select(s.c.id, s.c.user_id, s.c.team_id, s.c.model, s.c.last_day).where(
                s.c.organization_id == organization_id, s.c.user_id.in_(user_ids)
            )
        )
        return {(row[1], row[2], row[3]): (row[0], row[4]) for row in rows}

    found = await known()
    created: dict[SeriesKey, tuple[int, date | None]] = {}
    missing = sorted(spans.keys() - found.keys())
    if missing:
        rows = await session.execute(
            # The batch holds these users' balance rows, so nobody else creates them
            # meanwhile; DO NOTHING only keeps a surprise from becoming an error.
            _insert(session)(s)
            .on_conflict_do_nothing()
            .returning(s.c.id, s.c.user_id, s.c.team_id, s.c.model),
            [
                {
                    "organization_id": organization_id,
                    "user_id": user_id,
                    "team_id": team_id,
                    "model": model,
                    "first_day": spans[key].first_day,
                    "last_day": spans[key].last_day,
                    "tokens": spans[key].tokens,
                    "calls": spans[key].calls,
                }
                for key in missing
                for user_id, team_id, model in [key]
            ],
        )
        created = {(row[1], row[2], row[3]): (row[0], None) for row in rows}
        if not set(missing) <= created.keys():
            found = await known()
    existing = sorted(key for key in spans if key not in created)
    if existing:
        first = bindparam("fd", type_=Date)
        last = bindparam("ld", type_=Date)
        await session.execute(
            update(s)
            .where(s.c.id == bindparam("s", type_=BigInteger))
            .values(
                tokens=s.c.tokens + bindparam("dt", type_=BigInteger),
                calls=s.c.calls + bindparam("dc", type_=BigInteger),
                first_day=case((s.c.first_day > first, first), else_=s.c.first_day),
                last_day=case((s.c.last_day < last, last), else_=s.c.last_day),
            ),
            [
                {
                    "s": found[key][0],
                    "dt": spans[key].tokens,
                    "dc": spans[key].calls,
                    "fd": spans[key].first_day,
                    "ld": spans[key].last_day,
                }
                for key in existing
            ],
        )
    return {**{key: found[key] for key in existing}, **created}


async def _add_running_totals(session: AsyncSession, groups: Sequence[_Group]) -> None:
    """Add each group's tokens and calls to its day's running total and every later one.

    Later rows grow first; then each group's own row is created from the last
    earlier row, or grows if it exists. Own rows go in day order, so a new row
    built on an earlier day of the same batch already includes that day.
    """
    if not groups:
        return
    c = _table(UsageCumulative)
    series = bindparam("s", type_=BigInteger)
    day = bindparam("d", type_=Date)
    tokens = bindparam("dt", type_=BigInteger)
    calls = bindparam("dc", type_=BigInteger)

    def params(items: Sequence[_Group]) -> list[dict[str, Any]]:
        return [{"s": g.series_id, "d": g.day, "dt": g.tokens, "dc": g.calls} for g in items]

    late = [group for group in groups if group.later_rows]
    if late:
        await session.execute(
            update(c)
            .where(c.c.series_id == series, c.c.day > day)
            .values(tokens=c.c.tokens + tokens, calls=c.c.calls + calls),
            params(late),
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
    stmt = _insert(session)(c).from_select(["series_id", "day", "tokens", "calls"], source)
    stmt = stmt.on_conflict_do_update(
        index_elements=["series_id", "day"],
        set_={"tokens": c.c.tokens + tokens, "calls": c.c.calls + calls},
    )
    await session.execute(stmt, params(groups))
