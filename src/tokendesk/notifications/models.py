"""The outbox and what it is delivered through.

One ``notifications`` row is one delivery: one email to one person, or one post to one
webhook. Rows are written in the transaction of what caused them (a request, a
decision), so a committed request always has its notifications and a rolled-back one
never does; the worker (``worker.py``) claims, delivers and records them.
"""

from __future__ import annotations

import enum
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column

from tokendesk.db import Base, BigIntPK, UTCDateTime, utcnow

# Shares of a member's allowance used at which an organization without a settings row
# tells them (comma-separated, as ``OrgNotificationSettings.usage_thresholds`` keeps them).
DEFAULT_THRESHOLDS = "80,100"


class Kind(enum.StrEnum):
    REQUEST_CREATED = "request.created"
    REQUEST_DECIDED = "request.decided"
    BALANCE_THRESHOLD = "balance.threshold"
    # The run-out forecast says the balance empties before the reset.
    BALANCE_RUNOUT = "balance.runout"
    POOL_THRESHOLD = "pool.threshold"
    DIGEST = "requests.digest"
    TEST = "test"


class Channel(enum.StrEnum):
    EMAIL = "email"
    WEBHOOK = "webhook"


class Status(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    # An email queued while the server has no SMTP host: nothing will ever send it.
    SKIPPED = "skipped"


class WebhookFormat(enum.StrEnum):
    JSON = "json"
    SLACK = "slack"
    TEAMS = "teams"


class Notification(Base):
    __tablename__ = "notifications"
    __table_args__ = (
        # The worker's claim reads only what is due: pending rows by due time.
        Index(
            "ix_notifications_due",
            "next_attempt_at",
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
        Index("ix_notifications_org_status", "organization_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(40))
    channel: Mapped[str] = mapped_column(String(10))
    # An email's recipient; a webhook delivery names its webhook instead.
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=True, index=True
    )
    webhook_id: Mapped[int | None] = mapped_column(
        ForeignKey("notification_webhooks.id", ondelete="CASCADE"), nullable=True, index=True
    )
    token_request_id: Mapped[int | None] = mapped_column(
        ForeignKey("token_requests.id", ondelete="CASCADE"), nullable=True, index=True
    )
    # What the message says beyond the request it names (a threshold's figures).
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(10), default=Status.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set by a claim: until then no other worker takes the row. A worker that dies
    # mid-delivery leaves it set, and the row is due again once it has passed.
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class Attempt(Base):
    """One delivery attempt: when, whether it went through, and why not."""

    __tablename__ = "notification_attempts"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    notification_id: Mapped[int] = mapped_column(
        ForeignKey("notifications.id", ondelete="CASCADE"), index=True
    )
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # "sent", "retry" (failed, tried again later) or "failed" (given up).
    outcome: Mapped[str] = mapped_column(String(10))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class Webhook(Base):
    """Where an organization's (or one team's) notifications are posted."""

    __tablename__ = "notification_webhooks"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    # None: every request of the organization; a team: only that team's.
    team_id: Mapped[int | None] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), nullable=True
    )
    name: Mapped[str] = mapped_column(String(100))
    url: Mapped[str] = mapped_column(String(2000))
    format: Mapped[str] = mapped_column(String(10), default=WebhookFormat.JSON.value)
    # Kept as generated: signing needs the secret itself. Shown once, at creation.
    secret: Mapped[str] = mapped_column(String(100))
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OrgNotificationSettings(Base):
    """An organization's notification settings; no row means the defaults."""

    __tablename__ = "notification_settings"

    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    email_enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # Percentages of a member's allowance used at which they are told, comma-separated.
    usage_thresholds: Mapped[str] = mapped_column(String(100), default="80,100")
    # Percent of the pool handed out at which org admins are told; None: never.
    # No column default: a None written on insert must stay None (never), and the
    # defaults of an organization without a row are outbox.org_settings's.
    pool_threshold: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # A daily digest of pending requests to each approver, at ``digest_hour`` o'clock in
    # the organization's time zone.
    digest_enabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    digest_hour: Mapped[int] = mapped_column(Integer, default=8, server_default=text("8"))


class EmailOptOut(Base):
    """A kind of email a person chose not to get (the decision on their own request
    cannot be turned off)."""

    __tablename__ = "notification_opt_outs"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(40), primary_key=True)


class ThresholdAlert(Base):
    """A threshold already announced this period: each fires once per period."""

    __tablename__ = "notification_threshold_alerts"
    __table_args__ = (UniqueConstraint("scope", "subject_id", "period_start", "percent"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    # "user" (subject: a user id) or "pool" (subject: the organization id).
    scope: Mapped[str] = mapped_column(String(10))
    subject_id: Mapped[int] = mapped_column(BigInteger)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime)
    percent: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DigestSent(Base):
    """A digest queued for one approver on one local day: the key makes it once a day,
    however many instances' schedulers reach that hour."""

    __tablename__ = "notification_digests"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TeamApprover(Base):
    """Who is told of a team's new requests, when the team names them; a team with none
    tells its owners, else the organization's admins."""

    __tablename__ = "notification_team_approvers"

    team_id: Mapped[int] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
