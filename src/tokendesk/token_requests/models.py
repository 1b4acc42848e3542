from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from tokendesk.db import Base, BigIntPK, UTCDateTime, utcnow


class RequestStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


class TokenRequest(Base):
    __tablename__ = "token_requests"
    __table_args__ = (
        # One pending request per user, enforced by the database itself.
        Index(
            "uq_token_requests_one_pending",
            "user_id",
            unique=True,
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
        Index("ix_token_requests_org_status_created", "organization_id", "status", "created_at"),
        Index("ix_token_requests_team_status", "team_id", "status"),
        # Analytics reads requests by creation time; every column it needs is in the
        # index, so a range of a few thousand requests never touches the table.
        Index(
            "ix_token_requests_org_created_stats",
            "organization_id",
            "created_at",
            "status",
            "team_id",
            "user_id",
            "amount",
            "approved_amount",
            "decided_at",
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # The requester's team when the request was decided (or, until then, when they
    # asked); a pending request follows its requester's current team instead.
    team_id: Mapped[int | None] = mapped_column(
        ForeignKey("teams.id", ondelete="SET NULL"), nullable=True
    )
    amount: Mapped[int] = mapped_column(BigInteger)
    approved_amount: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=RequestStatus.PENDING.value)
    balance_at_request: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Written once, by the deciding caller, never from input. No foreign key: it is
    # history (SET NULL would erase who decided), and a bulk decision would pay a
    # referential check per request; ``tokendesk doctor`` reports a missing decider.
    decided_by_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    decision_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    # How it was decided (``DecisionKind``; NULL for decisions made before this was
    # recorded, and for pending or cancelled requests). A rule's decision keeps the
    # rule's id and its name at that moment: history, which outlives the rule.
    decision_kind: Mapped[str | None] = mapped_column(String(10), nullable=True)
    decided_by_rule_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    decided_by_rule_name: Mapped[str | None] = mapped_column(String(100), nullable=True)


class DecisionKind(enum.StrEnum):
    """How a request was decided: by a person one at a time, by a person in bulk, or
    by an auto-approve rule (``ApprovalRule``)."""

    MANUAL = "manual"
    BULK = "bulk"
    RULE = "rule"


class RuleKind(enum.StrEnum):
    """What a rule decides: submitted requests, or the organization's auto top-up."""

    REQUEST = "request"
    TOP_UP = "top_up"


class ApprovalRule(Base):
    """An auto-approve rule of an organization (``team_id`` NULL) or of one team.

    A request is approved by the first rule, team rules before the organization's and
    then by ``position``, whose every limit it fits; a limit left NULL does not limit.
    The per-user limits count that rule's own approvals in the requester's current
    period (see ``token_requests.rules``).
    """

    __tablename__ = "approval_rules"
    __table_args__ = (
        Index("ix_approval_rules_org_team_position", "organization_id", "team_id", "position"),
        # One top-up rule per organization: the debit path reads it with the balance row.
        Index(
            "uq_approval_rules_one_top_up",
            "organization_id",
            unique=True,
            sqlite_where=text("kind = 'top_up'"),
            postgresql_where=text("kind = 'top_up'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    team_id: Mapped[int | None] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), nullable=True
    )
    name: Mapped[str] = mapped_column(String(100))
    position: Mapped[int] = mapped_column(Integer, default=0)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    max_amount: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    max_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    pool_floor: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # ``request`` approves submitted requests; ``top_up`` is the organization's auto
    # top-up (``token_requests.top_ups``), whose ceiling is ``max_count`` and
    # ``max_tokens`` and which grants ``top_up_amount`` when a member's usage crosses
    # ``trigger_percent`` of what they have, at most once per ``cooldown_minutes``.
    kind: Mapped[str] = mapped_column(
        String(10), default=RuleKind.REQUEST.value, server_default=RuleKind.REQUEST.value
    )
    trigger_percent: Mapped[int | None] = mapped_column(Integer, nullable=True)
    top_up_amount: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cooldown_minutes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
