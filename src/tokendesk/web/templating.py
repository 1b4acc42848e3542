"""Jinja2 templates shared by the chat app and the admin center."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from fastapi.templating import Jinja2Templates

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))


def tokens(value: int | None) -> str:
    """1234567 -> '1,234,567' (thin, readable, no floats)."""
    if value is None:
        return "—"
    return f"{value:,}"


def local_date(value: datetime | None, tz: str = "UTC") -> str:
    if value is None:
        return "—"
    return value.astimezone(ZoneInfo(tz)).strftime("%d %b %Y")


def local_datetime(value: datetime | None, tz: str = "UTC") -> str:
    if value is None:
        return "—"
    return value.astimezone(ZoneInfo(tz)).strftime("%d %b %Y %H:%M %Z")


def relative(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return "—"
    seconds = int(((now or datetime.now(UTC)) - value).total_seconds())
    if seconds < 60:
        return "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return "just now"


templates.env.filters["tokens"] = tokens
templates.env.filters["local_date"] = local_date
templates.env.filters["local_datetime"] = local_datetime
templates.env.filters["relative"] = relative
