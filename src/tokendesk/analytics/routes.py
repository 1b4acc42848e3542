"""HTTP surface of analytics: every figure as JSON, every table as CSV.

All endpoints take the same filters: ``period`` (current, previous, 7d, 30d,
90d, custom), ``from`` and ``to`` (dates, for a custom range), ``team_id`` (0
for users without a team), ``model`` and ``endpoint`` (the gateway API, or
``reported``; the figures that cannot split by it say so with a null
``filters.endpoint``).
"""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from tokendesk.analytics import export, service
from tokendesk.analytics.schemas import (
    ByEndpointOut,
    ByModelOut,
    ForecastOut,
    Period,
    RequestsOut,
    Stack,
    TopTeamsOut,
    TopUsersOut,
    UsageOverTimeOut,
)
from tokendesk.bounds import DB_INT_MAX
from tokendesk.deps import CurrentReader, ReadSession

router = APIRouter(prefix="/analytics", tags=["analytics"])

TeamFilter = Annotated[
    int | None, Query(ge=0, le=DB_INT_MAX, description="0: users without a team")
]


def _query(
    period: Annotated[Period | None, Query(description="current period when left out")] = None,
    first_day: Annotated[date | None, Query(alias="from", description="custom range")] = None,
    last_day: Annotated[date | None, Query(alias="to", description="custom range")] = None,
    team_id: TeamFilter = None,
    model: Annotated[str | None, Query(max_length=service.MAX_MODEL_LENGTH)] = None,
    endpoint: Annotated[
        str | None,
        Query(max_length=50, description=f"one of {', '.join(service.ENDPOINTS)}"),
    ] = None,
) -> service.Query:
    return service.Query(
        period=period,
        first_day=first_day,
        last_day=last_day,
        team_id=team_id,
        model=model,
        endpoint=endpoint,
    )


Filters = Annotated[service.Query, Depends(_query)]
Limit = Annotated[int, Query(ge=1, le=service.MAX_LIMIT)]


async def _selection(
    session: ReadSession, actor: CurrentReader, query: Filters
) -> service.Selection:
    return await service.selection_for(session, actor=actor, query=query)


Selected = Annotated[service.Selection, Depends(_selection)]


@router.get("/top-users", response_model=TopUsersOut)
async def top_users(
    session: ReadSession, selection: Selected, limit: Limit = service.DEFAULT_LIMIT
) -> TopUsersOut:
    """Users ranked by tokens used in the range, with allocation, requests and grants."""
    return await service.top_users(session, selection=selection, limit=limit)


@router.get("/top-teams", response_model=TopTeamsOut)
async def top_teams(
    session: ReadSession, selection: Selected, limit: Limit = service.MAX_LIMIT
) -> TopTeamsOut:
    """Teams ranked by tokens spent in them in the range."""
    return await service.top_teams(session, selection=selection, limit=limit)


@router.get("/usage-over-time", response_model=UsageOverTimeOut)
async def usage_over_time(
    session: ReadSession,
    selection: Selected,
    stack: Stack = "team",
    series: Annotated[int, Query(ge=1, le=50)] = service.CHART_SERIES,
) -> UsageOverTimeOut:
    """Tokens per day, stacked by team, model or endpoint; stacks past ``series`` are
    summed as Other."""
    return await service.usage_over_time(session, selection=selection, stack=stack, series=series)


@router.get("/by-model", response_model=ByModelOut)
async def by_model(session: ReadSession, selection: Selected) -> ByModelOut:
    """Tokens (prompt, completion, cached, reasoning) and calls per model in the range."""
    return await service.by_model(session, selection=selection)


@router.get("/by-endpoint", response_model=ByEndpointOut)
async def by_endpoint(session: ReadSession, selection: Selected) -> ByEndpointOut:
    """Tokens (prompt, completion, cached, reasoning) and calls per gateway endpoint in
    the range; ``reported`` is usage reported through the usage API."""
    return await service.by_endpoint(session, selection=selection)


@router.get("/requests", response_model=RequestsOut)
async def requests(
    session: ReadSession, selection: Selected, limit: Limit = service.DEFAULT_LIMIT
) -> RequestsOut:
    """Requests made in the range: by status, tokens requested and granted, median
    time to a decision, top requesters."""
    return await service.requests(session, selection=selection, limit=limit)


@router.get("/forecast", response_model=ForecastOut)
async def forecast(
    session: ReadSession, selection: Selected, limit: Limit = service.DEFAULT_LIMIT
) -> ForecastOut:
    """Burn rate this period and the projected run-out date of each user, soonest first."""
    return await service.forecast(session, selection=selection, limit=limit)


@router.get("/{table}.csv", response_class=Response)
async def table_csv(
    table: export.Table, session: ReadSession, selection: Selected, stack: Stack = "team"
) -> Response:
    """One table as CSV, every row: top-users, top-teams, usage-over-time, by-model,
    by-endpoint, requests, requesters or forecast."""
    name, text = await export.export(session, selection=selection, table=table, stack=stack)
    return csv_response(name, text)


def csv_response(name: str, text: str) -> Response:
    return Response(
        content=text.encode("utf-8"),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
