"""Pydantic shapes for organizations, teams, users, API keys and integrations."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from tokendesk.accounts.emails import Email
from tokendesk.accounts.models import IdentityPreset, Integration, Role
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


# An email domain as DNS spells it, in ASCII (an internationalized one in its xn-- form);
# one label is enough, since directories hand over addresses such as ann@corp.
_DOMAIN_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
MAX_DOMAINS = 100
# What the organizations table keeps of the list, commas included.
MAX_DOMAINS_TEXT = 2000


def _domains(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    seen: dict[str, None] = {}
    for raw in value:
        domain = raw.strip().lower().removeprefix("@").rstrip(".")
        labels = domain.split(".")
        if len(domain) > 253 or not all(_DOMAIN_LABEL.match(label) for label in labels):
            raise PydanticCustomError(
                "domain",
                "'{value}' is not an email domain (e.g. example.com or corp.local)",
                {"value": raw[:100]},
            )
        seen.setdefault(domain, None)
    if len(",".join(seen)) > MAX_DOMAINS_TEXT:
        raise PydanticCustomError(
            "domains_too_long", f"the domains may take at most {MAX_DOMAINS_TEXT} characters"
        )
    return list(seen)


# Lower-cased, without duplicates; an empty list (or null) means any domain.
ProvisionDomains = Annotated[list[str], Field(max_length=MAX_DOMAINS), AfterValidator(_domains)]


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
    # Off, only org admins sign in with a password; everyone else through single sign-on.
    password_sign_in: bool = Field(default=True, strict=True)
    # Chat-app users an integration names for the first time become members.
    provision_users: bool = Field(default=True, strict=True)
    provision_domains: ProvisionDomains | None = None

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
    password_sign_in: bool | None = Field(default=None, strict=True)
    provision_users: bool | None = Field(default=None, strict=True)
    # ``[]`` or ``null``: any domain may be provisioned.
    provision_domains: ProvisionDomains | None = None
    # ``null``: provisioned people join no team.
    provision_team_id: Id | None = None

    _required = field_validator(
        "name",
        "default_allocation",
        "reset_day",
        "timezone",
        "max_request",
        "low_balance_percent",
        "carry_over_debt",
        "password_sign_in",
        "provision_users",
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
    password_sign_in: bool
    provision_users: bool
    provision_domains: list[str] = Field(description="Empty: any domain may be provisioned.")
    provision_team_id: int | None
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
    email: Email
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


# What RFC 9110 allows in a header's name.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Headers that carry something else: naming a user in one of them is a mistake.
_RESERVED_HEADERS = frozenset({"authorization", "cookie", "host", "content-length", "content-type"})
MAX_HEADER_NAME = 100
MIN_JWT_SECRET = 16
MAX_JWT_SECRET = 500


def _header_name(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not _HEADER_NAME.match(value):
        raise PydanticCustomError(
            "header_name", "must be an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"
        )
    if value.lower() in _RESERVED_HEADERS:
        raise PydanticCustomError(
            "header_name", "{name} carries something else; pick another header", {"name": value}
        )
    return value


HeaderName = Annotated[
    str, Field(min_length=1, max_length=MAX_HEADER_NAME), AfterValidator(_header_name)
]
JwtSecret = Annotated[str, Field(min_length=MIN_JWT_SECRET, max_length=MAX_JWT_SECRET)]


class IntegrationIn(StrictModel):
    name: str = Field(min_length=1, max_length=100)
    preset: IdentityPreset = IdentityPreset.GENERIC
    # Each absent one is the preset's own header.
    user_id_header: HeaderName | None = None
    email_header: HeaderName | None = None
    name_header: HeaderName | None = None
    # Open WebUI's FORWARD_USER_INFO_HEADER_JWT_SECRET: set, only a signed identity counts.
    jwt_secret: JwtSecret | None = None

    _name = field_validator("name")(stripped)


class IntegrationUpdate(StrictModel):
    """Absent fields stay as they are; ``null`` returns a header to the preset's own and
    removes the JWT secret."""

    name: str | None = Field(default=None, min_length=1, max_length=100)
    user_id_header: HeaderName | None = None
    email_header: HeaderName | None = None
    name_header: HeaderName | None = None
    jwt_secret: JwtSecret | None = None

    _required = field_validator("name")(_not_null)
    _name = field_validator("name")(stripped)


class IntegrationOut(BaseModel):
    id: int
    name: str
    preset: IdentityPreset
    user_id_header: str | None = Field(description="null: the preset's own headers.")
    email_header: str | None
    name_header: str | None
    jwt_secret_set: bool = Field(description="Whether only a signed identity counts.")
    prefix: str
    created_at: datetime
    created_by: int | None = Field(description="The user who created it; null from the CLI.")
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, integration: Integration) -> IntegrationOut:
        return cls(
            id=integration.id,
            name=integration.name,
            preset=IdentityPreset(integration.preset),
            user_id_header=integration.user_id_header,
            email_header=integration.email_header,
            name_header=integration.name_header,
            jwt_secret_set=bool(integration.jwt_secret),
            prefix=integration.prefix,
            created_at=integration.created_at,
            created_by=integration.created_by,
            last_used_at=integration.last_used_at,
            revoked_at=integration.revoked_at,
        )


class IntegrationCreated(IntegrationOut):
    key: str = Field(description="Shown once; store it now.")


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
