"""Pydantic shapes for token requests."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tokendesk.accounts.schemas import Ref
from tokendesk.bounds import PositiveTokens, Tokens
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
    decision_kind: Literal["manual", "bulk", "rule"] | None = Field(
        default=None, description="How it was decided; null while undecided."
    )
    decided_by_rule: Ref | None = Field(
        default=None,
        description="The auto-approve rule that approved it (its name at that moment).",
    )


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
    rule = None
    if row["decided_by_rule_id"] is not None:
        rule = {"id": row["decided_by_rule_id"], "name": row["decided_by_rule_name"] or ""}
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
        "decision_kind": row["decision_kind"],
        "decided_by_rule": rule,
    }


def to_out(row: Mapping[str, Any]) -> TokenRequestOut:
    return TokenRequestOut.model_validate(request_view(row))


# ---------------------------------------------------------------- auto-approve rules

MAX_RULE_NAME = 100
MAX_RULE_COUNT = 1_000
# Rules in one list (the organization's, or one team's): each submission reads them all.
MAX_RULES = 50

RuleName = Annotated[str, Field(min_length=1, max_length=MAX_RULE_NAME)]
RuleCountLimit = Annotated[int, Field(strict=True, ge=1, le=MAX_RULE_COUNT)]
RuleTeamId = Annotated[int, Field(strict=True, ge=1, le=2**63 - 1)]
RuleId = Annotated[int, Field(strict=True)]
StrictBool = Annotated[bool, Field(strict=True)]


class RuleLimits(StrictModel):
    max_amount: Amount | None = Field(
        default=None, description="Approve requests of at most this many tokens."
    )
    max_count: RuleCountLimit | None = Field(
        default=None, description="At most this many approvals per user per period."
    )
    max_tokens: Amount | None = Field(
        default=None, description="At most this many auto-approved tokens per user per period."
    )
    pool_floor: Tokens | None = Field(
        default=None,
        description="Only while the pool keeps at least this many tokens after the grant.",
    )


class RuleIn(RuleLimits):
    name: RuleName
    team_id: RuleTeamId | None = Field(
        default=None, description="The team whose requests it approves; null: the organization's."
    )
    enabled: StrictBool = True


class RuleUpdate(StrictModel):
    """Fields to change; a limit set to null stops limiting."""

    name: RuleName | None = None
    enabled: StrictBool | None = None
    max_amount: Amount | None = None
    max_count: RuleCountLimit | None = None
    max_tokens: Amount | None = None
    pool_floor: Tokens | None = None


class RuleOrderIn(StrictModel):
    team_id: RuleTeamId | None = None
    ids: list[RuleId] = Field(min_length=1, max_length=MAX_RULES)


class RuleOut(BaseModel):
    id: int
    name: str
    team: Ref | None
    position: int
    enabled: bool
    max_amount: int | None
    max_count: int | None
    max_tokens: int | None
    pool_floor: int | None
    created_at: datetime
    updated_at: datetime


class RuleList(BaseModel):
    items: list[RuleOut] = Field(description="In the order they are tried: team rules first.")


class RulePreview(BaseModel):
    period_start: datetime
    period_end: datetime
    requests: int = Field(description="Requests made in the last complete period, in scope.")
    approved: int = Field(description="Of those, how many the rule would have auto-approved.")
    tokens: int = Field(description="Tokens it would have granted.")


class TopUpIn(StrictModel):
    """The organization's auto top-up. Off, nothing is granted; every figure is kept."""

    enabled: StrictBool = False
    trigger_percent: Annotated[int, Field(strict=True, ge=1, le=100)] = Field(
        description="Top up when usage crosses this share of what the member has this "
        "period (allocation, grants and adjustments)."
    )
    top_up_amount: Amount = Field(description="Tokens granted each time.")
    cooldown_minutes: Annotated[int, Field(strict=True, ge=0, le=7 * 24 * 60)] | None = Field(
        default=None, description="After a top-up, none for the member for this long."
    )
    max_count: RuleCountLimit | None = Field(
        default=None, description="At most this many top-ups per member per period."
    )
    max_tokens: Amount | None = Field(
        default=None, description="At most this many topped-up tokens per member per period."
    )
    pool_floor: Tokens | None = Field(
        default=None,
        description="Only while the pool keeps at least this many tokens after the grant.",
    )


class TopUpOut(BaseModel):
    id: int | None = Field(description="The rule's id; null until it is first saved.")
    name: str
    enabled: bool
    trigger_percent: int | None
    top_up_amount: int | None
    cooldown_minutes: int | None
    max_count: int | None
    max_tokens: int | None
    pool_floor: int | None
