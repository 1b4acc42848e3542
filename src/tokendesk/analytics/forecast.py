"""The run-out forecast: each user's pace this period, and when it empties the balance."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from operator import attrgetter
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.lookups import get_organization
from tokendesk.analytics import repository as repo
from tokendesk.analytics.schemas import FiltersOut, ForecastItem, ForecastOut
from tokendesk.analytics.selection import DAY_SECONDS, DEFAULT_LIMIT, Selection
from tokendesk.ledger.periods import local_midnight, period_bounds, zone

# A burn rate measured over hours is noise (one long chat looks like a flood):
# measure over at least a day.
MIN_ELAPSED = timedelta(days=1)


def project(
    *,
    now: datetime,
    since: datetime,
    period_end: datetime,
    used: int,
    remaining: int,
) -> tuple[int, datetime | None, bool]:
    """(burn per day, when remaining reaches zero, whether that is before the reset).

    The burn rate is this period's usage over the time since ``since`` (see
    :func:`pace_since`). Someone already at zero runs out now.
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


def pace_since(
    *, period_start: datetime, joined: datetime | None, first_use: datetime | None
) -> datetime:
    """Where a user's pace is measured from.

    The period start; for someone who joined during the period, their joining,
    or the start of their first day with usage this period if that is earlier:
    usage can be reported for days before the account existed (an import, the
    demo's members), and measuring it from the joining would count days of use
    as one. Usage from the joining day on never moves it before the joining.
    """
    if joined is None:
        return period_start
    if first_use is None:
        return joined
    return max(period_start, min(joined, first_use))


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


def _first_use(first_day: date | None, joined: datetime | None, tz: ZoneInfo) -> datetime | None:
    """The start of the first day with usage, if that day is before the joining day.

    The rollups know days, not instants: usage on the joining day is taken to
    start at the joining, not at that day's midnight.
    """
    if first_day is None or joined is None or first_day >= joined.astimezone(tz).date():
        return None
    return local_midnight(first_day, tz)


async def forecast(
    session: AsyncSession, *, selection: Selection, limit: int | None = DEFAULT_LIMIT
) -> ForecastOut:
    """Users with usage this period, soonest to run out first.

    Always the current period, whatever the range: it is about balances now.
    The team filter follows each user's current team; the model filter does not apply.
    """
    now, where = selection.now, selection.where
    org = await get_organization(session, where.organization_id)
    period_start, period_end = period_bounds(now, reset_day=org.reset_day, timezone=org.timezone)
    tz = zone(org.timezone)
    rows = await repo.balances_with_usage(
        session,
        where=where,
        now=now,
        period_start=period_start,
        period_first_day=period_start.astimezone(tz).date(),
    )
    never = datetime.max.replace(tzinfo=now.tzinfo)
    projections: list[_Projection] = []
    for row in rows:
        available = row.allocation + row.granted + row.adjusted
        remaining = available - row.used - row.reserved
        burn, runs_out, before_reset = project(
            now=now,
            since=pace_since(
                period_start=period_start,
                joined=row.joined,
                first_use=_first_use(row.first_day, row.joined, tz),
            ),
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
