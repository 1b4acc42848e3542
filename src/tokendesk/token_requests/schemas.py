"""Pydantic shapes for token requests."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tokendesk.accounts.schemas import Ref
from tokendesk.bounds import PositiveTokens
from tokendesk.token_requests.models import RequestStatus

MAX_TEXT = 1000
MAX_BULK_IDS = 100_000

Sort = Literal["created_at", "-created_at", "amount", "-amount"]
BulkAction = Literal["approve", "reject"]

Amount = PositiveTokens
# Any whole number: one that no request can have is reported as not found, like a
# missing one, rather than failing the whole batch (see ``bulk``). Strict, so 1.5,
# "10" and true are refused instead of coerced.
RequestId = Annotated[int, Field(strict=True)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubmitIn(StrictModel):
    amount: Amount
    reason: Text | None = None


class ApproveIn(StrictModel):
    amount: Amount | None = Field(
        default=None, description="Tokens to grant; the requested amount when left out."
    )
    note: Text | None = None


class RejectIn(StrictModel):
    note: Text | None = None


class BulkIn(StrictModel):
    action: BulkAction
    ids: list[RequestId] = Field(min_length=1, max_length=MAX_BULK_IDS)
    note: Text | None = None

    @field_validator("ids")
    @classmethod
    def _unique(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError("must not contain duplicates")
        return value


class UserRef(BaseModel):
    id: int
    name: str
    email: str


class TokenRequestOut(BaseModel):
    id: int
    status: RequestStatus
    amount: int
    approved_amount: int | None
    reason: str | None
    user: UserRef
    team: Ref | None
    balance_at_request: int
    current_balance: int = Field(description="The requester's remaining tokens right now.")
    created_at: datetime
    decided_at: datetime | None
    decided_by: Ref | None
    decision_note: str | None


class TokenRequestPage(BaseModel):
    items: list[TokenRequestOut]
    total: int


class PendingCount(BaseModel):
    count: int


class StatusCounts(BaseModel):
    pending: int = 0
    approved: int = 0
    rejected: int = 0
    cancelled: int = 0
    all: int = 0


class Skipped(BaseModel):
    id: int
    reason: str


class BulkOut(BaseModel):
    decided: list[int]
    skipped: list[Skipped]


def json_time(moment: datetime | str | None) -> str | None:
    """A timestamp exactly as the API's JSON writes it (``...Z`` for UTC); a string
    is taken as already written (one decision time shared by a whole bulk)."""
    if moment is None or isinstance(moment, str):
        return moment
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat().replace("+00:00", "Z")


def request_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """A joined request row (see ``repository``) as the JSON of :class:`TokenRequestOut`.

    Ready for JSON as it is, so a bulk decision can put thousands of them in
    events without a model and a serialization pass for each.
    """
    team = None
    if row["team_id"] is not None and row["team_name"] is not None:
        team = {"id": row["team_id"], "name": row["team_name"]}
    decided_by = None
    if row["decided_by_id"] is not None and row["decider_name"] is not None:
        decided_by = {"id": row["decided_by_id"], "name": row["decider_name"]}
    return {
        "id": row["id"],
        "status": row["status"],
        "amount": row["amount"],
        "approved_amount": row["approved_amount"],
        "reason": row["reason"],
        "user": {"id": row["user_id"], "name": row["user_name"], "email": row["user_email"]},
        "team": team,
        "balance_at_request": row["balance_at_request"],
        "current_balance": int(row["current_balance"]),
        "created_at": json_time(row["created_at"]),
        "decided_at": json_time(row["decided_at"]),
        "decided_by": decided_by,
        "decision_note": row["decision_note"],
    }


def to_out(row: Mapping[str, Any]) -> TokenRequestOut:
    return TokenRequestOut.model_validate(request_view(row))
