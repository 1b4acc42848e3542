from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tokendesk.db import Base, BigIntPK, UTCDateTime, utcnow


class UsageEvent(Base):
    __tablename__ = "usage_events"
    # No index by user: nothing reads events by user (analytics reads the rollups), and
    # one would cost every batch a scattered page per user in the write.
    __table_args__ = (UniqueConstraint("organization_id", "event_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    # Caller-chosen id: a retry with the same id never charges twice.
    event_id: Mapped[str] = mapped_column(String(200))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    team_id: Mapped[int | None] = mapped_column(
        ForeignKey("teams.id", ondelete="SET NULL"), nullable=True
    )
    model: Mapped[str] = mapped_column(String(200))
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    # Of prompt_tokens, those served from the upstream's prompt cache; of
    # completion_tokens, those spent reasoning (0 where the reporter did not say).
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Tokens debited: each kind of token times the model's weight for it, if any.
    total_tokens: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(50), default="api")
    # The gateway API of the call (chat, embeddings, ...), for splitting usage by API;
    # NULL for usage reported through the usage API, which does not name one.
    endpoint: Mapped[str | None] = mapped_column(String(20), nullable=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The calendar date of occurred_at in the organization's time zone when recorded:
    # the rollups group by it in SQL, which knows no time zones on SQLite.
    day: Mapped[date] = mapped_column(Date)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Remaining balance right after this event was charged; a replay returns it.
    balance_after: Mapped[int] = mapped_column(BigInteger)


# Rollups key teams by plain id, 0 for "no team": a unique key must never hold NULL
# (NULLs never conflict, so upserts would add rows), and usage keeps the team it was
# spent in even after that team is deleted.
NO_TEAM = 0
# The model of a series that counts every model together.
ALL_MODELS = ""
# The endpoint key of usage reported through the usage API, which names none.
NO_ENDPOINT = ""


class DailySums:
    """What every daily rollup sums (metering.rollups.SUM_FIELDS): the tokens of each
    kind, the tokens debited and the calls."""

    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    # Parts of prompt_tokens and completion_tokens (0 for events that did not say).
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    total_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    calls: Mapped[int] = mapped_column(Integer, default=0)


class UsageTeamDaily(DailySums, Base):
    """Usage per organization-local day, team at the time of use, and model.

    ``day`` is the calendar date of ``occurred_at`` in the organization's time
    zone, so every period and every "last N days" range is whole rollup days.
    A few hundred rows a day whatever the head count: charts, teams and models
    read this. Updated in the same transaction as each event; its sums equal
    the raw events'.
    """

    __tablename__ = "usage_team_daily"
    __table_args__ = (
        # Covers one model's tokens and calls per day and team without visiting the rows.
        Index(
            "ix_usage_team_daily_org_model_day",
            "organization_id",
            "model",
            "day",
            "team_id",
            "total_tokens",
            "calls",
        ),
        {"sqlite_with_rowid": False},
    )

    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    team_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)


class UsageModelDaily(DailySums, Base):
    """Usage per organization-local day and model, across the whole organization."""

    __tablename__ = "usage_model_daily"
    __table_args__ = ({"sqlite_with_rowid": False},)

    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)


class UsageTeamEndpointDaily(DailySums, Base):
    """Usage per organization-local day, team at the time of use, model and gateway
    endpoint (``NO_ENDPOINT`` for usage reported through the usage API).

    What splits a team's usage by API; the figures that ask for no endpoint read
    :class:`UsageTeamDaily`, which is several times smaller.
    """

    __tablename__ = "usage_team_endpoint_daily"
    __table_args__ = ({"sqlite_with_rowid": False},)

    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    team_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(20), primary_key=True)


class UsageEndpointDaily(DailySums, Base):
    """Usage per organization-local day, model and gateway endpoint, across the whole
    organization: the organization's split by API without a row per team."""

    __tablename__ = "usage_endpoint_daily"
    __table_args__ = ({"sqlite_with_rowid": False},)

    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(20), primary_key=True)


class UsageSeries(Base):
    """One user's usage in one team, for one model or (``ALL_MODELS``) all of them.

    Its :class:`UsageCumulative` rows hold running totals, so a user's usage over
    any range of days is at most two index lookups, however long the range. The
    series' own totals and first and last days spare even those for the usual
    ranges: one that ends on or after ``last_day`` needs no lookup for its end,
    one that starts on or before ``first_day`` none for its start.
    """

    __tablename__ = "usage_series"
    __table_args__ = (UniqueConstraint("organization_id", "model", "team_id", "user_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    team_id: Mapped[int] = mapped_column(BigInteger, default=NO_TEAM)
    model: Mapped[str] = mapped_column(String(200))
    first_day: Mapped[date] = mapped_column(Date)
    last_day: Mapped[date] = mapped_column(Date)
    # Everything up to and including last_day: the last running total.
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    calls: Mapped[int] = mapped_column(BigInteger, default=0)


class UsageCumulative(Base):
    """A series' totals from its first day up to and including ``day``.

    A row exists for each day the series has usage; usage over days [a, b] is
    the last row on or before b minus the last row before a.
    """

    __tablename__ = "usage_cumulative"
    __table_args__ = ({"sqlite_with_rowid": False},)

    series_id: Mapped[int] = mapped_column(
        ForeignKey("usage_series.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    calls: Mapped[int] = mapped_column(BigInteger, default=0)
