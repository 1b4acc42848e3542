"""The notification API's shapes: webhooks, the organization's settings, deliveries."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field, field_validator

from tokendesk.accounts.schemas import StrictModel, stripped
from tokendesk.bounds import is_id
from tokendesk.notifications.models import Webhook, WebhookFormat
from tokendesk.notifications.webhooks import MAX_URL, check_url

MAX_THRESHOLDS = 5


def _team_id(value: int | None) -> int | None:
    if value is not None and not is_id(value):
        raise ValueError("must be the id of a team of the organization")
    return value


WebhookUrl = Annotated[str, Field(max_length=MAX_URL), AfterValidator(check_url)]


class WebhookIn(StrictModel):
    name: str = Field(min_length=1, max_length=100)
    url: WebhookUrl
    format: WebhookFormat = WebhookFormat.JSON
    # A team's webhook hears only that team's requests; none, the whole organization's.
    team_id: Annotated[int | None, AfterValidator(_team_id)] = None

    _name = field_validator("name")(stripped)


class WebhookOut(BaseModel):
    id: int
    name: str
    url: str
    format: WebhookFormat
    team_id: int | None
    created_at: datetime

    @classmethod
    def of(cls, row: Webhook) -> WebhookOut:
        return cls(
            id=row.id,
            name=row.name,
            url=row.url,
            format=WebhookFormat(row.format),
            team_id=row.team_id,
            created_at=row.created_at,
        )


class WebhookCreated(WebhookOut):
    # Shown here once: every post is signed with it (see the README), and no later
    # answer carries it.
    secret: str


def _thresholds(value: list[int] | None) -> list[int] | None:
    if value is None:
        return None
    if len(set(value)) != len(value):
        raise ValueError("must not repeat a percentage")
    return sorted(value)


Percent = Annotated[int, Field(ge=1, le=100)]


class NotificationSettingsIn(StrictModel):
    """Absent fields stay as they are."""

    email_enabled: bool | None = None
    # Shares of a member's allowance used at which they are told (at most once each per period).
    usage_thresholds: Annotated[
        list[Percent] | None, Field(max_length=MAX_THRESHOLDS), AfterValidator(_thresholds)
    ] = None
    # Share of the pool handed out at which org admins are told; null: never.
    pool_threshold: Percent | None = None
    clear_pool_threshold: bool = False
    # A daily digest of pending requests to each approver, at this hour (0-23) in the
    # organization's time zone.
    digest_enabled: bool | None = None
    digest_hour: Annotated[int | None, Field(ge=0, le=23)] = None


class NotificationSettingsOut(BaseModel):
    email_enabled: bool
    # Whether this server sends email at all (TOKENDESK_SMTP_HOST).
    email_available: bool
    usage_thresholds: list[int]
    pool_threshold: int | None
    digest_enabled: bool
    digest_hour: int


class TestIn(StrictModel):
    """``email`` (to the caller) or a webhook's id."""

    channel: Annotated[str, Field(pattern=r"^(email|webhook)$")]
    webhook_id: Annotated[int | None, AfterValidator(_team_id)] = None


class TestQueued(BaseModel):
    notification_id: int


class AttemptOut(BaseModel):
    attempted_at: datetime
    outcome: str
    error: str | None


class DeliveryOut(BaseModel):
    id: int
    kind: str
    channel: str
    status: str
    attempts: int
    to: str
    token_request_id: int | None
    created_at: datetime
    next_attempt_at: datetime | None
    sent_at: datetime | None
    last_error: str | None


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    total: int


class EmailPreference(BaseModel):
    kind: str
    description: str
    enabled: bool
    # The answer to one's own request always comes: it cannot be turned off.
    can_turn_off: bool


class PreferencesIn(StrictModel):
    """Which emails the caller gets; absent kinds stay as they are."""

    new_requests: bool | None = None
    daily_digest: bool | None = None
    # Thresholds crossed and the run-out forecast's warning, both about one's own balance.
    balance_alerts: bool | None = None
    pool_alerts: bool | None = None


MAX_TEAM_APPROVERS = 20


def _distinct_ids(value: list[int]) -> list[int]:
    if len(set(value)) != len(value):
        raise ValueError("must not repeat a person")
    if not all(is_id(v) for v in value):
        raise ValueError("must be ids of people of the organization")
    return value


class TeamApproversIn(StrictModel):
    """Who hears of the team's new requests; an empty list: its owners, else the admins."""

    user_ids: Annotated[
        list[int], Field(max_length=MAX_TEAM_APPROVERS), AfterValidator(_distinct_ids)
    ]


class Person(BaseModel):
    id: int
    name: str
    email: str


class TeamApproversOut(BaseModel):
    team_id: int
    # The approvers the team names; empty: the default rule.
    user_ids: list[int]
    # Who hears of a member's new request now (the named approvers, else the owners,
    # else the org admins).
    notified: list[Person]
    # Who may be named: the team's owners and the organization's admins.
    eligible: list[Person]
