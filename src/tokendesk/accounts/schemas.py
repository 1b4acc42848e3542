"""Pydantic shapes for organizations, teams, users and API keys."""

from __future__ import annotations

from datetime import datetime
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator
from pydantic_core import PydanticCustomError

from tokendesk.accounts.models import Role
from tokendesk.bounds import MAX_TOKENS, Id, PositiveTokens, Tokens
from tokendesk.ledger.models import Balance

AllocationSource = Literal["override", "team", "organization"]


# The longest password anyone can set: a longer one at sign-in is wrong, unhashed.
MAX_PASSWORD = 200


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _not_null(value: object) -> object:
    # In a PATCH, an absent field means "leave it"; an explicit null on a field that cannot
    # be cleared is a mistake worth naming, not something to ignore silently.
    if value is None:
        raise PydanticCustomError("not_null", "must not be null")
    return value


def stripped(value: str | None) -> str | None:
    """A text field without its surrounding spaces; blank is refused, None passes."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        raise PydanticCustomError("blank", "must not be blank")
    return value


class Ref(BaseModel):
    id: int
    name: str


class OrganizationIn(StrictModel):
    name: str = Field(min_length=1, max_length=200)
    default_allocation: Tokens = 100_000
    reset_day: int = Field(default=1, ge=1, le=28, strict=True)
    timezone: str = Field(default="UTC", min_length=1, max_length=64)
    max_request: PositiveTokens = 1_000_000
    pool: Tokens | None = None
    low_balance_percent: int = Field(default=20, ge=0, le=100, strict=True)
    # A balance below zero at a period's end opens the next period as a debit.
    carry_over_debt: bool = Field(default=True, strict=True)

    _name = field_validator("name")(stripped)


class OrganizationUpdate(StrictModel):
    """Absent fields stay as they are; ``pool: null`` removes the pool."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    default_allocation: Tokens | None = None
    reset_day: int | None = Field(default=None, ge=1, le=28, strict=True)
    timezone: str | None = Field(default=None, min_length=1, max_length=64)
    max_request: PositiveTokens | None = None
    pool: Tokens | None = None
    low_balance_percent: int | None = Field(default=None, ge=0, le=100, strict=True)
    carry_over_debt: bool | None = Field(default=None, strict=True)

    _required = field_validator(
        "name",
        "default_allocation",
        "reset_day",
        "timezone",
        "max_request",
        "low_balance_percent",
        "carry_over_debt",
    )(_not_null)
    _name = field_validator("name")(stripped)


class PoolOut(BaseModel):
    pool: int
    allocated: int
    granted: int
    left: int


class OrganizationOut(BaseModel):
    id: int
    name: str
    default_allocation: int
    reset_day: int
    timezone: str
    max_request: int
    pool: int | None
    low_balance_percent: int
    carry_over_debt: bool
    period_start: datetime
    next_reset_at: datetime
    pool_usage: PoolOut | None = None


class TeamIn(StrictModel):
    name: str = Field(min_length=1, max_length=200)
    default_allocation: Tokens | None = None

    _name = field_validator("name")(stripped)


class TeamUpdate(StrictModel):
    """``default_allocation: null`` removes the team default; ``owner_ids`` is the full new set."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    default_allocation: Tokens | None = None
    owner_ids: list[Id] | None = Field(default=None, max_length=100)

    _required = field_validator("name", "owner_ids")(_not_null)
    _name = field_validator("name")(stripped)


class TeamOut(BaseModel):
    id: int
    name: str
    default_allocation: int | None
    owners: list[Ref]
    member_count: int


class UserIn(StrictModel):
    email: EmailStr
    name: str = Field(min_length=1, max_length=200)
    role: Role = Role.MEMBER
    team_id: Id | None = None
    allocation_override: Tokens | None = None
    password: str | None = Field(default=None, min_length=8, max_length=MAX_PASSWORD)

    _name = field_validator("name")(stripped)


class UserUpdate(StrictModel):
    """Absent fields stay as they are; ``team_id: null`` and ``allocation_override: null``
    clear the team and the override."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    role: Role | None = None
    team_id: Id | None = None
    allocation_override: Tokens | None = None
    is_active: bool | None = Field(default=None, strict=True)
    password: str | None = Field(default=None, min_length=8, max_length=MAX_PASSWORD)
    # Changing your own password takes the one you have now (and a browser session).
    current_password: str | None = Field(default=None, max_length=MAX_PASSWORD)

    _required = field_validator("name", "role", "is_active", "password")(_not_null)
    _name = field_validator("name")(stripped)


class BalanceOut(BaseModel):
    allocation: int
    granted: int
    adjusted: int
    used: int
    reserved: int
    remaining: int
    period_start: datetime
    next_reset_at: datetime

    @classmethod
    def of(cls, balance: Balance) -> BalanceOut:
        return cls(
            allocation=balance.allocation,
            granted=balance.granted,
            adjusted=balance.adjusted,
            used=balance.used,
            reserved=balance.reserved,
            remaining=balance.remaining,
            period_start=balance.period_start,
            next_reset_at=balance.period_end,
        )


class UserOut(BaseModel):
    id: int
    email: str
    name: str
    role: Role
    team: Ref | None
    allocation_override: int | None
    allocation_source: AllocationSource
    is_active: bool
    balance: BalanceOut


class MeOut(BaseModel):
    id: int
    email: str
    name: str
    role: Role
    organization: Ref
    team: Ref | None
    balance: BalanceOut
    low_balance_percent: int
    max_request: int


class AdjustmentIn(StrictModel):
    amount: int = Field(strict=True, ge=-MAX_TOKENS, le=MAX_TOKENS)
    note: str = Field(min_length=1, max_length=1000)

    _note = field_validator("note")(stripped)

    @field_validator("amount")
    @classmethod
    def _nonzero(cls, value: int) -> int:
        if value == 0:
            raise PydanticCustomError("nonzero", "must not be zero")
        return value


class LedgerEntryOut(BaseModel):
    id: int
    kind: str
    amount: int
    period_start: datetime
    reason: str | None
    actor: Ref | None
    token_request_id: int | None
    usage_event_id: int | None
    created_at: datetime


class ApiKeyIn(StrictModel):
    name: str = Field(default="default", min_length=1, max_length=100)

    _name = field_validator("name")(stripped)


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="Shown once; store it now.")


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
