from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import BigInteger, ForeignKey, Index, String, Table, Text, literal_column
from sqlalchemy.orm import Mapped, mapped_column

from tokendesk.db import Base, BigIntPK, UTCDateTime, utcnow

Amount = TypeVar("Amount", int, Any)


def remaining_of(
    allocation: Amount, granted: Amount, adjusted: Amount, used: Amount, reserved: Amount
) -> Amount:
    """What a member has left this period: the one definition of remaining.

    It takes the balance's five figures as integers or as SQL expressions, so the
    Python property, the SQL of every check (:data:`REMAINING`) and the raw SQL of
    SQLite's quick path (:data:`REMAINING_SQL`) are this one sum.
    """
    return allocation + granted + adjusted - used - reserved


def given_of(allocation: Amount, granted: Amount, adjusted: Amount) -> Amount:
    """What the period gives a member: the allocation, grants and adjustments, the
    measure a low balance is judged against where nothing else is at hand."""
    return allocation + granted + adjusted


# The columns of the balance row, in remaining_of's order.
BALANCE_FIGURES = ("allocation", "granted", "adjusted", "used", "reserved")
# remaining_of as raw SQL text over the balances table's columns.
REMAINING_SQL = str(remaining_of(*(literal_column(name) for name in BALANCE_FIGURES)))
GIVEN_SQL = str(given_of(*(literal_column(name) for name in BALANCE_FIGURES[:3])))


class EntryKind(enum.StrEnum):
    ALLOCATION = "allocation"  # the period's allocation, written when a period starts
    ALLOCATION_CHANGE = "allocation_change"  # difference when an allocation changes mid-period
    GRANT = "grant"  # an approved token request
    ADJUSTMENT = "adjustment"  # a manual correction by an admin
    USAGE = "usage"  # tokens consumed (negative)
    # A period's opening debit: the balance below zero that the previous period ended with.
    CARRIED_DEBIT = "carried_debit"


class Balance(Base):
    """Cached balance for the user's current period, kept equal to the ledger.

    What is left is :func:`remaining_of` its five figures.

    ``adjusted`` includes the period's carried debit (a ``carried_debit`` entry).
    """

    __tablename__ = "balances"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    period_start: Mapped[datetime] = mapped_column(UTCDateTime)
    period_end: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    allocation: Mapped[int] = mapped_column(BigInteger, default=0)
    granted: Mapped[int] = mapped_column(BigInteger, default=0)
    adjusted: Mapped[int] = mapped_column(BigInteger, default=0)
    used: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    @property
    def remaining(self) -> int:
        return remaining_of(self.allocation, self.granted, self.adjusted, self.used, self.reserved)


# remaining_of over the balance row's columns, for SQL.
REMAINING = remaining_of(
    Balance.allocation, Balance.granted, Balance.adjusted, Balance.used, Balance.reserved
)
GIVEN = given_of(Balance.allocation, Balance.granted, Balance.adjusted)
BALANCES = cast(Table, Balance.__table__)


class LedgerEntry(Base):
    """Append-only record of every balance change.

    Only ``user_id`` (the ledger goes with its user) and ``usage_event_id`` are
    foreign keys. The other references are written by the services from rows
    they have just read, never from input, and a foreign key on them would only
    cost a referential check per inserted row (a bulk approval of 10,000
    requests would run 30,000 more): ``organization_id`` is the user's own
    organization (users never move), the actor and the token request are never
    deleted apart from with their organization or user. ``tokendesk doctor``
    reports any entry whose references do not hold.
    """

    __tablename__ = "ledger_entries"
    __table_args__ = (Index("ix_ledger_entries_user_period", "user_id", "period_start"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    organization_id: Mapped[int] = mapped_column(BigInteger, index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    period_start: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(32))
    amount: Mapped[int] = mapped_column(BigInteger)
    actor_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    token_request_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    usage_event_id: Mapped[int | None] = mapped_column(
        ForeignKey("usage_events.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ReservationStatus(enum.StrEnum):
    HELD = "held"
    SETTLED = "settled"
    RELEASED = "released"
    EXPIRED = "expired"


class Reservation(Base):
    """A hold on tokens while an upstream call is in flight."""

    __tablename__ = "reservations"
    __table_args__ = (Index("ix_reservations_status_expires", "status", "expires_at"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default=ReservationStatus.HELD.value)
    settled_amount: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


RESERVATIONS = cast(Table, Reservation.__table__)
