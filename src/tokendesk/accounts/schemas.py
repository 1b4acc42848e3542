"""Pydantic shapes for organizations, teams, users and API keys."""

from __future__ import annotations

from datetime import datetime
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator

from tokendesk.accounts.models import Role

MAX_TOKENS = 10**15  # far above any real allocation, well inside BigInteger


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Ref(BaseModel):
    id: int
    name: str


class OrganizationIn(StrictModel):
    name: str = Field(min_length=1, max_length=200)
    default_allocation: int = Field(default=100_000, ge=0, le=MAX_TOKENS, strict=True)
    reset_day: int = Field(default=1, ge=1, le=28, strict=True)
    timezone: str = Field(default="UTC", min_length=1, max_length=64)
    max_request: int = Field(default=1_000_000, gt=0, le=MAX_TOKENS, strict=True)
    pool: int | None = Field(default=None, ge=0, le=MAX_TOKENS, strict=True)
    low_balance_percent: int = Field(default=20, ge=0, le=100, strict=True)


class OrganizationUpdate(StrictModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    default_allocation: int | None = Field(default=None, ge=0, le=MAX_TOKENS, strict=True)
    reset_day: int | None = Field(default=None, ge=1, le=28, strict=True)
    timezone: str | None = Field(default=None, min_length=1, max_length=64)
    max_request: int | None = Field(default=None, gt=0, le=MAX_TOKENS, strict=True)
    pool: int | None = Field(default=None, ge=0, le=MAX_TOKENS, strict=True)
    low_balance_percent: int | None = Field(default=None, ge=0, le=100, strict=True)


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
    period_start: datetime
    next_reset_at: datetime
    pool_usage: PoolOut | None = None


class TeamIn(StrictModel):
    name: str = Field(min_length=1, max_length=200)
    default_allocation: int | None = Field(default=None, ge=0, le=MAX_TOKENS, strict=True)


class TeamUpdate(StrictModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    default_allocation: int | None = Field(default=None, ge=0, le=MAX_TOKENS, strict=True)
    owner_ids: list[int] | None = None


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
    team_id: int | None = None
    allocation_override: int | None = Field(default=None, ge=0, le=MAX_TOKENS, strict=True)
    password: str | None = Field(default=None, min_length=8, max_length=200)

    @field_validator("name")
    @classmethod
    def _strip(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be blank")
        return value


class UserUpdate(StrictModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    role: Role | None = None
    team_id: int | None = None
    allocation_override: int | None = Field(default=None, ge=0, le=MAX_TOKENS, strict=True)
    is_active: bool | None = None
    password: str | None = Field(default=None, min_length=8, max_length=200)


class BalanceOut(BaseModel):
    allocation: int
    granted: int
    adjusted: int
    used: int
    reserved: int
    remaining: int
    period_start: datetime
    next_reset_at: datetime


class UserOut(BaseModel):
    id: int
    email: str
    name: str
    role: Role
    team: Ref | None
    allocation_override: int | None
    allocation_source: str  # "override" | "team" | "organization"
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

    @field_validator("amount")
    @classmethod
    def _nonzero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must not be zero")
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


class ApiKeyOut(BaseModel):
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
