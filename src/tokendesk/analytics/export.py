"""Every analytics table as CSV: the same services, every row, one header line."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any, Literal, get_args

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.analytics import service
from tokendesk.analytics.service import Selection

Table = Literal[
    "top-users",
    "top-teams",
    "usage-over-time",
    "by-model",
    "by-endpoint",
    "requests",
    "requesters",
    "forecast",
]
TABLES: tuple[str, ...] = get_args(Table)

# The columns of each item table, in order; the header is these names.
COLUMNS: dict[str, tuple[str, ...]] = {
    "top-users": (
        "user_id", "name", "email", "team_name", "tokens", "calls", "allocation",
        "range_allocation", "share_of_allocation", "requests", "requested", "granted",
    ),
    "top-teams": (
        "team_id", "name", "tokens", "calls", "share_of_tokens", "members", "allocation",
        "requests", "requested", "granted",
    ),
    # New columns go last: a spreadsheet reading the old ones by position still reads them.
    "by-model": (
        "model", "tokens", "prompt_tokens", "completion_tokens", "calls", "share_of_tokens",
        "cached_tokens", "reasoning_tokens",
    ),
    "by-endpoint": (
        "endpoint", "label", "tokens", "prompt_tokens", "completion_tokens", "cached_tokens",
        "reasoning_tokens", "calls", "share_of_tokens",
    ),
    "requests": ("status", "count", "requested", "granted"),
    "requesters": (
        "user_id", "name", "email", "team_name", "requests", "requested", "granted", "approved",
        "rejected", "pending",
    ),
    "forecast": (
        "user_id", "name", "email", "team_name", "allocation", "available", "used", "remaining",
        "burn_per_day", "runs_out_at", "before_reset",
    ),
}  # fmt: skip
# Spreadsheets run a cell that starts with one of these as a formula.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


async def _items(session: AsyncSession, selection: Selection, table: str) -> Sequence[BaseModel]:
    if table == "top-users":
        return (await service.top_users(session, selection=selection, limit=None)).items
    if table == "top-teams":
        return (await service.top_teams(session, selection=selection)).items
    if table == "by-model":
        return (await service.by_model(session, selection=selection)).items
    if table == "by-endpoint":
        return (await service.by_endpoint(session, selection=selection)).items
    if table == "requests":
        return (await service.requests(session, selection=selection, limit=1)).by_status
    if table == "requesters":
        return (await service.requests(session, selection=selection, limit=None)).top_requesters
    if table == "forecast":
        return (await service.forecast(session, selection=selection, limit=None)).items
    raise ValueError(f"unknown table {table!r}")


async def rows(
    session: AsyncSession, *, selection: Selection, table: str, stack: str = "team"
) -> tuple[list[str], list[list[Any]]]:
    """(header, rows) of one table, every row of it (no limit)."""
    if table == "usage-over-time":
        chart = await service.usage_over_time(
            session, selection=selection, stack=stack, series=service.MAX_LIMIT
        )
        header = ["day", "total", *(series.label for series in chart.series)]
        return header, [
            [day, chart.totals[i], *(series.tokens[i] for series in chart.series)]
            for i, day in enumerate(chart.days)
        ]
    columns = COLUMNS[table]
    items = await _items(session, selection, table)
    return list(columns), [[getattr(item, name) for name in columns] for item in items]


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def to_csv(header: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([_cell(name) for name in header])
    writer.writerows([_cell(value) for value in row] for row in body)
    return out.getvalue()


def filename(table: str, selection: Selection) -> str:
    if table == "forecast":
        return f"tokendesk-forecast-{selection.now.date().isoformat()}.csv"
    r = selection.range
    return f"tokendesk-{table}-{r.first_day.isoformat()}-to-{r.last_day.isoformat()}.csv"


async def export(
    session: AsyncSession, *, selection: Selection, table: str, stack: str = "team"
) -> tuple[str, str]:
    """(file name, CSV text) of one table."""
    header, body = await rows(session, selection=selection, table=table, stack=stack)
    return filename(table, selection), to_csv(header, body)
