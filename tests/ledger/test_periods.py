from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tokendesk.errors import InvalidInput
from tokendesk.ledger.periods import local_midnight, next_reset, period_bounds


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def local(zone: str, *args: int) -> datetime:
    return datetime(*args, tzinfo=ZoneInfo(zone))  # type: ignore[misc]


class TestPeriodBoundsInUTC:
    @pytest.mark.parametrize(
        ("at", "reset_day", "start", "end"),
        [
            (utc(2030, 3, 15, 12), 1, utc(2030, 3, 1), utc(2030, 4, 1)),
            (utc(2030, 1, 31, 23, 59, 59), 1, utc(2030, 1, 1), utc(2030, 2, 1)),
            (utc(2030, 2, 27, 23), 28, utc(2030, 1, 28), utc(2030, 2, 28)),
            (utc(2028, 2, 29, 12), 28, utc(2028, 2, 28), utc(2028, 3, 28)),
            (utc(2030, 4, 30, 12), 28, utc(2030, 4, 28), utc(2030, 5, 28)),
            (utc(2030, 12, 31, 23, 59), 1, utc(2030, 12, 1), utc(2031, 1, 1)),
            (utc(2030, 1, 10), 15, utc(2029, 12, 15), utc(2030, 1, 15)),
            (utc(2030, 12, 20), 15, utc(2030, 12, 15), utc(2031, 1, 15)),
        ],
    )
    def test_period_runs_from_reset_day_to_the_next_one(
        self, at: datetime, reset_day: int, start: datetime, end: datetime
    ) -> None:
        assert period_bounds(at, reset_day=reset_day, timezone="UTC") == (start, end)

    def test_instant_exactly_on_the_boundary_belongs_to_the_new_period(self) -> None:
        boundary = utc(2030, 3, 28)

        assert period_bounds(boundary, reset_day=28, timezone="UTC")[0] == boundary
        before = boundary - timedelta(microseconds=1)
        assert period_bounds(before, reset_day=28, timezone="UTC")[1] == boundary

    def test_next_reset_is_the_end_of_the_current_period(self) -> None:
        assert next_reset(utc(2030, 3, 5), reset_day=1, timezone="UTC") == utc(2030, 4, 1)

    def test_consecutive_periods_leave_no_gap(self) -> None:
        at = utc(2029, 11, 20)
        for _ in range(15):
            start, end = period_bounds(at, reset_day=20, timezone="UTC")
            assert period_bounds(end, reset_day=20, timezone="UTC")[0] == end
            assert start <= at < end
            at = end


class TestPeriodBoundsInLocalTime:
    def test_berlin_period_starts_at_local_midnight_and_is_an_hour_short_over_dst_start(
        self,
    ) -> None:
        start, end = period_bounds(utc(2030, 3, 15), reset_day=1, timezone="Europe/Berlin")

        assert start == local("Europe/Berlin", 2030, 3, 1) == utc(2030, 2, 28, 23)
        assert end == local("Europe/Berlin", 2030, 4, 1) == utc(2030, 3, 31, 22)
        assert end - start == timedelta(days=31, hours=-1)

    def test_berlin_period_is_an_hour_long_over_dst_end(self) -> None:
        start, end = period_bounds(utc(2030, 10, 15), reset_day=1, timezone="Europe/Berlin")

        assert (start, end) == (utc(2030, 9, 30, 22), utc(2030, 10, 31, 23))
        assert end - start == timedelta(days=31, hours=1)

    def test_new_york_reset_on_the_day_dst_starts_is_at_local_midnight(self) -> None:
        start, end = period_bounds(utc(2030, 3, 20), reset_day=10, timezone="America/New_York")

        assert start == utc(2030, 3, 10, 5)  # 00:00 EST; clocks jump at 02:00
        assert end == utc(2030, 4, 10, 4)  # 00:00 EDT
        for bound in (start, end):
            assert bound.astimezone(ZoneInfo("America/New_York")).time().isoformat() == "00:00:00"

    def test_new_york_reset_on_the_day_dst_ends_is_at_local_midnight(self) -> None:
        start, end = period_bounds(utc(2030, 11, 3, 12), reset_day=3, timezone="America/New_York")

        assert (start, end) == (utc(2030, 11, 3, 4), utc(2030, 12, 3, 5))

    def test_local_time_decides_the_period_not_utc(self) -> None:
        # 23:30 UTC on the last day of February is already 1 March in Berlin.
        start, _ = period_bounds(utc(2030, 2, 28, 23, 30), reset_day=1, timezone="Europe/Berlin")

        assert start == utc(2030, 2, 28, 23)
        assert period_bounds(utc(2030, 2, 28, 23, 30), reset_day=1, timezone="UTC")[0] == utc(
            2030, 2, 1
        )

    def test_where_midnight_does_not_exist_the_period_starts_at_the_first_real_minute(
        self,
    ) -> None:
        # Santiago skips 00:00-01:00 on 8 September 2030.
        start, end = period_bounds(utc(2030, 9, 20), reset_day=8, timezone="America/Santiago")

        assert start == utc(2030, 9, 8, 4)
        assert start.astimezone(ZoneInfo("America/Santiago")).hour == 1
        assert end == local("America/Santiago", 2030, 10, 8)
        assert (
            period_bounds(start - timedelta(seconds=1), reset_day=8, timezone="America/Santiago")[1]
            == start
        )

    def test_where_midnight_happens_twice_the_period_starts_at_the_first(self) -> None:
        # Havana turns 01:00 back to 00:00 on 3 November 2030.
        start, _ = period_bounds(utc(2030, 11, 3, 5, 30), reset_day=3, timezone="America/Havana")

        assert start == utc(2030, 11, 3, 4)

    def test_local_midnight_of_an_ordinary_day(self) -> None:
        tz = ZoneInfo("Asia/Tokyo")

        assert local_midnight(datetime(2030, 6, 1).date(), tz) == utc(2030, 5, 31, 15)


class TestPeriodBoundsRefusals:
    @pytest.mark.parametrize("reset_day", [0, 29, 31, -1])
    def test_reset_day_outside_1_to_28_is_refused(self, reset_day: int) -> None:
        with pytest.raises(InvalidInput) as refused:
            period_bounds(utc(2030, 1, 1), reset_day=reset_day, timezone="UTC")

        assert refused.value.field == "reset_day"

    def test_unknown_time_zone_is_refused(self) -> None:
        with pytest.raises(InvalidInput) as refused:
            period_bounds(utc(2030, 1, 1), reset_day=1, timezone="Mars/Olympus_Mons")

        assert refused.value.field == "timezone"
