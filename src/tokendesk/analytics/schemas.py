"""Pydantic shapes of the analytics figures (the JSON API and the admin page share them)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field

Period = Literal["current", "previous", "7d", "30d", "90d", "custom"]
Stack = Literal["team", "model"]

PERIOD_LABELS: dict[str, str] = {
    "current": "Current period",
    "previous": "Previous period",
    "7d": "Last 7 days",
    "30d": "Last 30 days",
    "90d": "Last 90 days",
    "custom": "Custom range",
}


class RangeOut(BaseModel):
    """Whole calendar days in the organization's time zone, both ends included."""

    period: Period
    label: str
    first_day: date
    last_day: date
    days: int
    timezone: str
    # The same range as instants: [start, end).
    start: datetime
    end: datetime


class FiltersOut(BaseModel):
    team_id: int | None = Field(description="0 means users without a team")
    model: str | None


class Figure(BaseModel):
    range: RangeOut
    filters: FiltersOut


class TopUser(BaseModel):
    user_id: int
    name: str
    email: str
    team_id: int | None
    team_name: str | None
    tokens: int
    calls: int
    allocation: int = Field(description="the user's monthly allocation this period")
    range_allocation: int = Field(description="the allocation pro-rated to the range's length")
    share_of_allocation: float | None = Field(description="tokens / range_allocation")
    requests: int = Field(description="token requests made in the range")
    requested: int
    granted: int = Field(description="tokens granted on those requests")


class TopUsersOut(Figure):
    total_tokens: int
    active_users: int
    items: list[TopUser]


class TopTeam(BaseModel):
    team_id: int = Field(description="0 for users without a team")
    name: str
    exists: bool = Field(description="false for users without a team and for deleted teams")
    tokens: int
    calls: int
    share_of_tokens: float | None
    members: int
    allocation: int = Field(description="sum of the current members' monthly allocations")
    requests: int
    requested: int
    granted: int


class TopTeamsOut(Figure):
    total_tokens: int
    items: list[TopTeam]


class Series(BaseModel):
    key: str
    label: str
    total: int
    tokens: list[int]


class UsageOverTimeOut(Figure):
    stack: Stack
    days: list[date]
    totals: list[int]
    series: list[Series]


class ModelUsage(BaseModel):
    model: str
    tokens: int
    prompt_tokens: int
    completion_tokens: int
    calls: int
    share_of_tokens: float | None


class ByModelOut(Figure):
    total_tokens: int
    total_calls: int
    items: list[ModelUsage]


class StatusCount(BaseModel):
    status: str
    count: int
    requested: int
    granted: int


class Requester(BaseModel):
    user_id: int
    name: str
    email: str
    team_name: str | None
    requests: int
    requested: int
    granted: int
    approved: int
    rejected: int
    pending: int


class RequestsOut(Figure):
    total: int
    requested: int
    granted: int
    decided: int
    median_decision_seconds: float | None
    by_status: list[StatusCount]
    top_requesters: list[Requester]


class ForecastItem(BaseModel):
    user_id: int
    name: str
    email: str
    team_name: str | None
    allocation: int
    available: int = Field(description="allocation + granted + adjusted this period")
    used: int
    remaining: int
    burn_per_day: int
    runs_out_at: datetime | None = Field(description="None: not before the reset")
    before_reset: bool


class ForecastOut(BaseModel):
    period_start: datetime
    period_end: datetime
    now: datetime
    timezone: str
    filters: FiltersOut
    users_with_usage: int
    running_out: int = Field(description="users projected to reach zero before the reset")
    items: list[ForecastItem]
