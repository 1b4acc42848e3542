"""The run-out forecast: each user's pace this period, and when it empties the balance."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import attrgetter

from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.lookups import get_organization
from tokendesk.analytics import repository as repo
from tokendesk.analytics.schemas import FiltersOut, ForecastItem, ForecastOut
from tokendesk.analytics.selection import DAY_SECONDS, DEFAULT_LIMIT, Selection
from tokendesk.ledger.periods import period_bounds

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
    org = await get_organization(session, where.organization_id)
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
