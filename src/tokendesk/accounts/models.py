from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column

from tokendesk.db import Base, BigIntPK, UTCDateTime, utcnow


class Role(enum.StrEnum):
    MEMBER = "member"
    TEAM_OWNER = "team_owner"
    ORG_ADMIN = "org_admin"
    SUPER_ADMIN = "super_admin"


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    default_allocation: Mapped[int] = mapped_column(BigInteger)
    reset_day: Mapped[int] = mapped_column(Integer, default=1)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    max_request: Mapped[int] = mapped_column(BigInteger)
    # Monthly ceiling on everything handed out (allocations + grants); None means no pool.
    pool: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Percent of the allocation under which a member is "running low".
    low_balance_percent: Mapped[int] = mapped_column(Integer, default=20)
    # A balance below zero when a period ends opens the next period as a debit, so
    # overspending is never wiped by the reset; off, every period starts afresh.
    carry_over_debt: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # Chat-app users an integration names for the first time become members here, with
    # the default allocation: an operator rolling out to a thousand staff creates nobody
    # by hand. Off, only people already in tokendesk (or linked by email) are served.
    provision_users: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # Off, only the organization's admins (break-glass) sign in with a password; everyone
    # else signs in through the organization's identity provider.
    password_sign_in: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # Lower-cased email domains, comma-separated, that may be provisioned; None for any.
    provision_domains: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    # The team provisioned people join. No foreign key: teams already reference their
    # organization, and a cycle would complicate every batch migration of this table; a
    # team that no longer exists (or belongs elsewhere) is ignored when provisioning.
    provision_team_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Team(Base):
    __tablename__ = "teams"
    __table_args__ = (UniqueConstraint("organization_id", "name"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    default_allocation: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TeamOwner(Base):
    __tablename__ = "team_owners"

    team_id: Mapped[int] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20), default=Role.MEMBER.value)
    team_id: Mapped[int | None] = mapped_column(
        ForeignKey("teams.id", ondelete="SET NULL"), nullable=True, index=True
    )
    allocation_override: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    password_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The last browser sign-in and how: "password", or a provider's source ("oidc:corp").
    last_sign_in_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_sign_in_via: Mapped[str | None] = mapped_column(String(120), nullable=True)


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_user_id", "user_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    # First characters of the key, safe to show so people can tell keys apart.
    prefix: Mapped[str] = mapped_column(String(16))
    # SHA-256 of the whole key: keys are long random strings, so a fast hash is enough.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class IdentityPreset(enum.StrEnum):
    """Where a chat app names its user: the headers and body field each one sends."""

    OPEN_WEBUI = "open-webui"
    LIBRECHAT = "librechat"
    GENERIC = "generic"


class Integration(Base):
    """A chat app (Open WebUI, LibreChat, ...) calling the gateway for an organization's
    users. Its key speaks for the people the app names and for nobody else: it opens
    neither the REST API nor the admin center, and a call naming nobody is refused."""

    __tablename__ = "integrations"
    __table_args__ = (UniqueConstraint("organization_id", "name"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    preset: Mapped[str] = mapped_column(String(20), default=IdentityPreset.GENERIC.value)
    # Header names overriding the preset's (None: the preset's own).
    user_id_header: Mapped[str | None] = mapped_column(String(100), nullable=True)
    email_header: Mapped[str | None] = mapped_column(String(100), nullable=True)
    name_header: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # Open WebUI's FORWARD_USER_INFO_HEADER_JWT_SECRET: set, only a signed identity counts.
    # Kept as given, since verifying an HMAC needs the secret itself.
    jwt_secret: Mapped[str | None] = mapped_column(String(500), nullable=True)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


# The namespaces of ``ExternalIdentity.source``: an identity provider's subjects
# (``oidc:<provider name>``) and a chat app's user ids (``integration:<integration id>``).
PROVIDER_SOURCE = "oidc:"
INTEGRATION_SOURCE = "integration:"


class ExternalIdentity(Base):
    """Who a person is in another system: a chat app's stable user id (``source``
    ``integration:<id>``), later an identity provider's subject. People are found by
    it first, so an email changed on the other side follows the id."""

    __tablename__ = "external_identities"
    __table_args__ = (UniqueConstraint("source", "external_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    source: Mapped[str] = mapped_column(String(120))
    external_id: Mapped[str] = mapped_column(String(255))
    # The email the other side last sent, for the admin center; the user's own stays.
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LoginSession(Base):
    """One signed-in browser: its cookie is honoured only while this row exists."""

    __tablename__ = "login_sessions"

    # SHA-256 of the session id the cookie carries: the table alone opens no session.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # How the browser signed in: "password", or a provider's source ("oidc:corp").
    # Sessions from before this was kept have none, and count as password sessions.
    via: Mapped[str | None] = mapped_column(String(120), nullable=True)
