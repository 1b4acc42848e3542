"""Pydantic shapes of the usage API."""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from tokendesk.accounts.schemas import StrictModel
from tokendesk.bounds import EventTokens, Id

MAX_BATCH = 1000


class UsageEventIn(StrictModel):
    event_id: str = Field(min_length=1, max_length=200, description="Unique per organization.")
    user_email: str | None = Field(default=None, min_length=1, max_length=320)
    # Runs even when absent, so that "neither given" is reported on this field.
    user_id: Id | None = Field(default=None, validate_default=True)
    model: str = Field(min_length=1, max_length=200)
    prompt_tokens: EventTokens
    completion_tokens: EventTokens
    cached_tokens: EventTokens = Field(
        default=0, description="Of prompt_tokens, those served from the upstream's prompt cache."
    )
    reasoning_tokens: EventTokens = Field(
        default=0, description="Of completion_tokens, those spent reasoning."
    )
    occurred_at: AwareDatetime | None = Field(
        default=None, description="When the call happened; default now."
    )
    source: str = Field(default="api", min_length=1, max_length=50)

    @field_validator("user_id")
    @classmethod
    def _exactly_one_user(cls, value: int | None, info: ValidationInfo) -> int | None:
        if "user_email" not in info.data:
            return value  # user_email itself failed and is reported already
        if (value is None) == (info.data["user_email"] is None):
            raise ValueError("give exactly one of user_email and user_id")
        return value


class UsageBatchIn(StrictModel):
    events: list[UsageEventIn] = Field(min_length=1, max_length=MAX_BATCH)


class UsageResultOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    event_id: str
    user_id: int
    total_tokens: int
    remaining: int = Field(description="Balance right after this event; negative if overspent.")
    replayed: bool = Field(description="True when the event id was already recorded.")


class UsageBatchOut(BaseModel):
    results: list[UsageResultOut]
