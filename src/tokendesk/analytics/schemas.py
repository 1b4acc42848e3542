"""Pydantic shapes of the analytics figures (the JSON API and the admin page share them)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field

Period = Literal["current", "previous", "7d", "30d", "90d", "custom"]
Stack = Literal["team", "model", "endpoint"]

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
    """The filters a figure applied (one it cannot apply is null here)."""

    team_id: int | None = Field(description="0 means users without a team")
    model: str | None
    endpoint: str | None = Field(
        default=None,
        description="the gateway API (chat, responses, embeddings, messages, completions), or "
        "reported: usage reported through the usage API",
    )


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


class KindTotals(BaseModel):
    tokens: int = Field(description="tokens debited")
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = Field(description="of prompt_tokens, served from the prompt cache")
    reasoning_tokens: int = Field(description="of completion_tokens, spent reasoning")
    calls: int
    share_of_tokens: float | None


class ModelUsage(KindTotals):
    model: str


class ByModelOut(Figure):
    total_tokens: int
    total_calls: int
    items: list[ModelUsage]


class EndpointUsage(KindTotals):
    endpoint: str = Field(description="as the endpoint filter takes it")
    label: str


class ByEndpointOut(Figure):
    total_tokens: int
    total_calls: int
    total_cached_tokens: int
    total_reasoning_tokens: int
    items: list[EndpointUsage]


class StatusCount(BaseModel):
    status: str
    count: int
    requested: int
    granted: int


class DecisionKindCount(BaseModel):
    kind: str = Field(
        description="manual, bulk or rule; unknown for decisions recorded before kinds were"
    )
    count: int
    granted: int


class RuleCount(BaseModel):
    rule_id: int
    name: str = Field(description="The rule's name when it last decided in the range.")
    count: int
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
    median_decision_seconds: float | None = Field(
        description="Median time from request to decision of the requests people decided "
        "(a rule decides as the request is made)."
    )
    by_status: list[StatusCount]
    by_kind: list[DecisionKindCount] = Field(
        default_factory=list, description="Decided requests by how they were decided."
    )
    by_rule: list[RuleCount] = Field(
        default_factory=list, description="Requests auto-approved, by rule, most first."
    )
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
