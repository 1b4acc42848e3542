"""Ranges are whole calendar days in the organization's time zone, periods included."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from tests.analytics.support import actor_of, at, d, figure, record, spend
from tests.factories import make_world
from tokendesk.analytics import service
from tokendesk.analytics.schemas import RangeOut
from tokendesk.analytics.service import Query, resolve_range
from tokendesk.db import Database
from tokendesk.errors import InvalidInput


def resolve(now: datetime, *, timezone: str = "UTC", reset_day: int = 1, **query: Any) -> RangeOut:
    return resolve_range(Query(**query), now=now, reset_day=reset_day, timezone=timezone)[0]


class TestResolveRange:
    def test_current_period_runs_from_the_reset_day_to_the_day_before_the_next(self) -> None:
        r = resolve(at(3, 20), reset_day=15)
        assert (r.period, r.first_day, r.last_day, r.days) == ("current", d(3, 15), d(4, 14), 31)
        assert (r.start, r.end) == (at(3, 15, 0), at(4, 15, 0))

    def test_no_period_means_the_current_one(self) -> None:
        assert resolve(at(3, 20)).period == "current"

    def test_previous_period_is_the_one_before_the_current(self) -> None:
        r = resolve(at(3, 20), period="previous")
        assert (r.first_day, r.last_day, r.days) == (d(2, 1), d(2, 28), 28)

    @pytest.mark.parametrize(
        ("period", "first"),
        [("7d", d(3, 14)), ("30d", d(2, 19)), ("90d", date(2029, 12, 21))],
    )
    def test_last_n_days_end_today(self, period: str, first: date) -> None:
        r = resolve(at(3, 20), period=period)
        assert (r.first_day, r.last_day) == (first, d(3, 20))

    def test_today_is_the_organizations_today(self) -> None:
        # 23:30 UTC on 19 March is already 20 March in Berlin.
        r = resolve(at(3, 19, 23, 30), timezone="Europe/Berlin", period="7d")
        assert r.last_day == d(3, 20)
        assert r.end == datetime(2030, 3, 20, 23, 0, tzinfo=UTC)

    def test_a_berlin_period_starts_at_local_midnight(self) -> None:
        r = resolve(at(3, 20), timezone="Europe/Berlin")
        assert r.start == datetime(2030, 2, 28, 23, 0, tzinfo=UTC)
        # Summer time starts on 31 March: the period ends at 22:00 UTC.
        assert r.end == datetime(2030, 3, 31, 22, 0, tzinfo=UTC)

    def test_custom_range_includes_both_days(self) -> None:
        r = resolve(at(3, 20), period="custom", first_day=d(1, 1), last_day=d(1, 31))
        assert (r.first_day, r.last_day, r.days) == (d(1, 1), d(1, 31), 31)

    def test_dates_without_a_period_are_a_custom_range(self) -> None:
        assert resolve(at(3, 20), first_day=d(1, 1), last_day=d(1, 2)).period == "custom"

    @pytest.mark.parametrize(
        ("query", "message"),
        [
            ({"period": "custom", "last_day": d(1, 2)}, "from: required for a custom range"),
            ({"period": "custom", "first_day": d(1, 2)}, "to: required for a custom range"),
            ({"first_day": d(1, 2), "last_day": d(1, 1)}, "to: must not be before from"),
            ({"first_day": d(1, 1), "last_day": date(2031, 1, 2)}, "to: a range spans at most"),
            ({"period": "fortnight"}, "period: must be one of"),
        ],
    )
    def test_bad_ranges_are_refused_naming_the_field(
        self, query: dict[str, object], message: str
    ) -> None:
        with pytest.raises(InvalidInput) as caught:
            resolve(at(3, 20), **query)
        assert caught.value.message.startswith(message)


class TestBerlinPeriodBoundary:
    async def test_an_event_at_2330_utc_before_a_berlin_reset_belongs_to_the_new_period(
        self, database: Database
    ) -> None:
        world = await make_world(database, timezone="Europe/Berlin")
        now = at(3, 2)
        await record(
            database,
            world.org_id,
            spend("old", world.alice, 5, at(2, 28, 22, 30)),  # 23:30 in Berlin: February
            spend("new", world.alice, 70, at(2, 28, 23, 30)),  # 00:30 on 1 March in Berlin
            now=now,
        )
        admin = await actor_of(database, world.admin)

        current = await figure(database, admin, service.top_users, now=now)
        previous = await figure(database, admin, service.top_users, now=now, period="previous")
        by_day = await figure(database, admin, service.usage_over_time, now=now, period="7d")

        assert current.total_tokens == 70
        assert previous.total_tokens == 5
        assert dict(zip(by_day.days, by_day.totals, strict=True))[d(3, 1)] == 70
        assert dict(zip(by_day.days, by_day.totals, strict=True))[d(2, 28)] == 5
