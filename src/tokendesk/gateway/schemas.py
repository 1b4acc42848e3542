"""The gateway's own shapes beyond OpenAI's: what a chat app reads of its user's balance."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class PendingOut(BaseModel):
    id: int
    amount: int


class ChatAppBalance(BaseModel):
    """``GET /v1/tokendesk/balance``: the balance of the person the call names."""

    user_id: int
    email: str
    remaining: int = Field(description="tokens left now, holds of calls in flight deducted")
    allocation: int = Field(description="the period's allocation")
    limit: int = Field(
        description="everything the period gives: the allocation, grants and adjustments "
        "(a debit carried from the last period counts against what is left)"
    )
    used: int
    reserved: int = Field(description="held by calls in flight")
    period_start: datetime
    reset_at: datetime = Field(description="when the balance resets (the period's end)")
    low: bool = Field(description="under the organization's low-balance threshold, or nothing left")
    low_balance_percent: int
    timezone: str = Field(description="the organization's time zone, its resets' calendar")
    request_link: str = Field(
        description="the person's signed page for asking for more tokens, with no password"
    )
    request_link_expires_at: datetime
    pending_request: PendingOut | None
