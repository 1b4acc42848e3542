"""Period math: a period runs from the org's reset day at 00:00 local time to the next one."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from tokendesk.errors import InvalidInput


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"timezone: unknown IANA time zone {name!r}", field="timezone") from None


def is_valid_timezone(name: str) -> bool:
    return name in available_timezones() or name == "UTC"


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The first instant of ``day`` in ``tz``, as UTC.

    Where midnight falls in a DST gap (some zones switch at 00:00), the day
    starts at the first wall-clock time that exists.
    """
    naive = datetime(day.year, day.month, day.day)
    candidate = naive.replace(tzinfo=tz)
    utc = candidate.astimezone(UTC)
    if utc.astimezone(tz).replace(tzinfo=None) != naive:
        # Nonexistent local time: walk forward in minutes until the wall clock exists.
        probe = naive
        while True:
            probe += timedelta(minutes=15)
            utc = probe.replace(tzinfo=tz).astimezone(UTC)
            if utc.astimezone(tz).replace(tzinfo=None) == probe:
                break
    return utc


def _add_months(year: int, month: int, delta: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + delta
    return index // 12, index % 12 + 1


def period_bounds(at: datetime, *, reset_day: int, timezone: str) -> tuple[datetime, datetime]:
    """Return (start, end) in UTC of the period that contains ``at``."""
    if not 1 <= reset_day <= 28:
        raise InvalidInput("reset_day: must be between 1 and 28", field="reset_day")
    tz = zone(timezone)
    local = at.astimezone(tz)
    year, month = local.year, local.month
    start = local_midnight(date(year, month, reset_day), tz)
    if at < start:
        year, month = _add_months(year, month, -1)
        start = local_midnight(date(year, month, reset_day), tz)
    next_year, next_month = _add_months(year, month, 1)
    end = local_midnight(date(next_year, next_month, reset_day), tz)
    return start, end


def next_reset(at: datetime, *, reset_day: int, timezone: str) -> datetime:
    return period_bounds(at, reset_day=reset_day, timezone=timezone)[1]
