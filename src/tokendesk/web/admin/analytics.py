"""The Analytics page: top consumers, usage over time, models, endpoints, requests,
run-out forecast.

The page renders every table on the server; the filter form reloads the body
through htmx, and analytics.js draws the chart from the JSON embedded with it.
Each table exports the same figures as CSV with the same filters.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response

from tokendesk.analytics import export, service
from tokendesk.analytics.routes import csv_response
from tokendesk.analytics.schemas import PERIOD_LABELS, Stack
from tokendesk.deps import ReadSession
from tokendesk.errors import InvalidInput
from tokendesk.web.admin.common import (
    AdminPageReader,
    AdminRoute,
    admin_render,
    optional_int,
    query_string,
)

router = APIRouter(route_class=AdminRoute, include_in_schema=False)

TOP_USERS = 25
TOP_TEAMS = 25
TOP_REQUESTERS = 10
FORECAST_ROWS = 25

Q = Annotated[str | None, Query()]
From = Annotated[str | None, Query(alias="from")]


def _day(value: str | None, field: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{field}: must be a date (YYYY-MM-DD)", field=field) from None


def _filters(
    period: Q = None,
    first: From = None,
    to: Q = None,
    team_id: Q = None,
    model: Q = None,
    endpoint: Q = None,
) -> dict[str, Any]:
    """The query as the page's links carry it: blanks dropped, unknown periods and
    endpoints ignored."""
    chosen = period if period in PERIOD_LABELS else None
    if chosen != "custom":
        first = to = None
    return {
        "period": chosen,
        "from": first or None,
        "to": to or None,
        "team_id": optional_int(team_id),
        "model": (model or "").strip() or None,
        "endpoint": endpoint if endpoint in service.ENDPOINTS else None,
    }


Filters = Annotated[dict[str, Any], Depends(_filters)]


def _stack(stack: Q = None) -> Stack:
    return "model" if stack == "model" else "endpoint" if stack == "endpoint" else "team"


ChartStack = Annotated[Stack, Depends(_stack)]


def _query(filters: dict[str, Any]) -> service.Query:
    return service.Query(
        period=filters["period"],
        first_day=_day(filters["from"], "from"),
        last_day=_day(filters["to"], "to"),
        team_id=filters["team_id"],
        model=filters["model"],
        endpoint=filters["endpoint"],
    )


def duration(seconds: float | None) -> str:
    """3725 -> '1 h 2 min': a decision time read at a glance."""
    if seconds is None:
        return "—"
    minutes = round(seconds / 60)
    if minutes < 1:
        return "under a minute"
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min"


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


@router.get("/admin/analytics", response_class=HTMLResponse)
async def analytics_page(
    request: Request,
    session: ReadSession,
    actor: AdminPageReader,
    filters: Filters,
    chart_stack: ChartStack,
) -> HTMLResponse:
    teams, models = await service.filter_choices(session, actor=actor)
    context: dict[str, Any] = {
        "filters": filters,
        "stack": chart_stack,
        "periods": list(PERIOD_LABELS.items()),
        "teams": teams,
        "models": models,
        "endpoints": service.endpoint_choices(),
        "error": None,
        "duration": duration,
        "percent": percent,
        "qs": query_string(**filters),
        "tables": export.TABLES,
    }
    try:
        selection = await service.selection_for(session, actor=actor, query=_query(filters))
    except InvalidInput as exc:
        context["error"] = exc.message
    else:
        chart = await service.usage_over_time(session, selection=selection, stack=chart_stack)
        context.update(
            selection=selection,
            span=selection.range,
            users=await service.top_users(session, selection=selection, limit=TOP_USERS),
            top_teams=await service.top_teams(session, selection=selection, limit=TOP_TEAMS),
            chart=chart.model_dump(mode="json"),
            models_usage=await service.by_model(session, selection=selection),
            endpoints_usage=await service.by_endpoint(session, selection=selection),
            request_stats=await service.requests(
                session, selection=selection, limit=TOP_REQUESTERS
            ),
            forecast=await service.forecast(session, selection=selection, limit=FORECAST_ROWS),
        )
    return await admin_render(
        request,
        session,
        actor,
        "admin/analytics.html",
        section="analytics",
        page_title="Analytics",
        **context,
    )


@router.get("/admin/analytics/export/{table}.csv", response_class=Response)
async def export_csv(
    table: export.Table,
    session: ReadSession,
    actor: AdminPageReader,
    filters: Filters,
    stack: ChartStack,
) -> Response:
    selection = await service.selection_for(session, actor=actor, query=_query(filters))
    name, text = await export.export(session, selection=selection, table=table, stack=stack)
    return csv_response(name, text)
