"""Settings: one class, environment prefix ``TOKENDESK_``, safe local defaults."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRET = "change-me"
# An upstream call must end, and its hold be settled, before the hold expires: the
# scheduler may release an expired hold on any tick, so its interval buys no time. The
# remaining tenth of the TTL covers taking the hold before the call and settling it
# after; a share rather than a fixed margin keeps it in proportion to any TTL.
UPSTREAM_DEADLINE_SHARE = 0.9
# Of the shutdown grace period, the part calls in flight may use; the rest is kept for
# settling what they delivered (one batch commit) and closing the database and the bus.
SHUTDOWN_CALLS_SHARE = 0.8


class InsecureSecret(ValueError):
    """The session secret is the placeholder or too short, outside demo mode."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOKENDESK_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default_factory=lambda: f"sqlite+aiosqlite:///{Path('data').absolute() / 'tokendesk.db'}",
        description="SQLAlchemy async URL; SQLite file under ./data by default.",
    )
    host: str = "127.0.0.1"
    port: int = 8000
    secret_key: str = PLACEHOLDER_SECRET
    # Demo mode tolerates the placeholder secret; `make run` turns it on.
    demo: bool = False
    # How long a gateway hold may live before the scheduler releases it; a gateway call
    # lasts at most UPSTREAM_DEADLINE_SHARE of it (see upstream_deadline_seconds).
    reservation_ttl_seconds: int = Field(default=600, gt=0)
    # How often the in-server scheduler looks for ended periods and stale holds.
    scheduler_interval_seconds: float = 30.0
    scheduler_enabled: bool = True
    # How long `tokendesk serve` takes to stop on SIGTERM, at most: calls in flight get
    # SHUTDOWN_CALLS_SHARE of it to finish, the rest is for settling and closing.
    shutdown_grace_seconds: float = Field(default=30.0, gt=0, le=3600, allow_inf_nan=False)
    # uvicorn's and tokendesk's log level; at info, one line per request (tokendesk.request).
    log_level: str = "info"
    # "text" for a person at a terminal, "json" for one JSON object per line.
    log_format: str = "text"
    # GET /metrics (Prometheus); on its own port when metrics_port is set (0: any free
    # port, for tests), behind "Authorization: Bearer <metrics_token>" when that is set.
    metrics_enabled: bool = True
    metrics_token: str | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    # Upstream models: JSON list of {name, base_url, api_key?, weight?}, or a TOML file with
    # [[models]] tables. With neither, the built-in "demo" model answers locally.
    models: str | None = None
    models_file: str | None = None
    # Completion budget of a call that names none, capped by the model's max_output_tokens
    # and shrunk to what the balance covers, down to the floor below.
    gateway_default_max_tokens: int = Field(default=1024, ge=1)
    # The smallest completion budget worth a call: below it a call is refused.
    gateway_min_completion_tokens: int = Field(default=64, ge=1)
    # Longest wait for an upstream's next bytes; a whole call is bounded by its deadline.
    upstream_timeout_seconds: float = Field(default=120.0, gt=0, allow_inf_nan=False)
    # Trusted-header mode (off unless set): a proxy authenticating with an org admin's key may
    # name the end user in this header, e.g. X-OpenWebUI-User-Email.
    trusted_user_header: str | None = None
    # Identity providers people sign in with (OpenID Connect): a JSON list of providers, or
    # a TOML file with [[providers]] tables (see accounts/sso_config.py and the README).
    oidc_providers: str | None = None
    oidc_providers_file: str | None = None
    # Seconds an API key lookup is cached on the gateway's hot path.
    key_cache_seconds: float = 5.0
    # "auto": PostgreSQL LISTEN/NOTIFY on PostgreSQL (events cross processes), in-process on SQLite.
    event_bus: str = "auto"
    # Request bodies are read whole before anything runs (see bodies.py): at most this
    # many bytes per kind of route, and all of it within the timeout.
    api_body_max_bytes: int = Field(default=1 << 20, gt=0)
    gateway_body_max_bytes: int = Field(default=10 << 20, gt=0)
    # Forms are small, but a bulk decision on the largest selection sends every id.
    form_body_max_bytes: int = Field(default=1 << 20, gt=0)
    body_timeout_seconds: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    # Per user, per instance; far above what a member's chat app or agents need at once.
    gateway_calls_per_user: int = Field(default=32, gt=0)
    event_streams_per_user: int = Field(default=32, gt=0)
    conversations_per_user: int = Field(default=10_000, gt=0)
    message_max_chars: int = Field(default=200_000, gt=0)
    # Hours a browser session lasts after signing in; signing out ends it sooner.
    session_hours: int = Field(default=14 * 24, ge=1, le=366 * 24)
    # The address people open tokendesk at, e.g. https://tokens.example.com. With https,
    # session cookies are only ever sent over https.
    public_url: str | None = None
    # Hours a personal request link (/ask/..., sent with the gateway's out-of-tokens
    # refusal) stays valid after it is issued.
    request_link_hours: int = Field(default=24, ge=1, le=30 * 24)
    # Proxies trusted to report the client's address (X-Forwarded-For) and scheme: a
    # comma-separated list of addresses or networks, "*" for any, "" for none.
    forwarded_allow_ips: str = "127.0.0.1"
    # Email over SMTP (notifications): off while no host is set.
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    # "starttls" upgrades a plain connection (port 587), "tls" opens one (port 465),
    # "none" sends in the clear (a relay on localhost).
    smtp_security: Literal["none", "starttls", "tls"] = "starttls"
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_from: str = "tokendesk@localhost"
    smtp_timeout_seconds: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    # Connections a worker sends a batch of emails over at once.
    smtp_connections: int = Field(default=4, ge=1, le=32)
    # The notification worker in the server (the outbox's delivery).
    notify_worker_enabled: bool = True
    # How long a notification is retried before it is marked failed.
    notify_give_up_hours: float = Field(default=24.0, gt=0, le=24 * 30, allow_inf_nan=False)
    # The first retry's delay; it doubles with every failed attempt, up to an hour.
    notify_retry_seconds: float = Field(default=30.0, gt=0, le=3600, allow_inf_nan=False)
    # How long a claimed notification is another worker's: one killed mid-delivery
    # leaves its claim to run out, and the notification is delivered again.
    notify_lease_seconds: float = Field(default=120.0, gt=0, le=3600, allow_inf_nan=False)
    # The longest a queued notification waits when no event wakes the worker.
    notify_poll_seconds: float = Field(default=5.0, gt=0, le=3600, allow_inf_nan=False)
    notify_batch_size: int = Field(default=500, ge=1, le=5000)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, allow_inf_nan=False)

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        levels = ("critical", "error", "warning", "info", "debug", "trace")
        if value.strip().lower() not in levels:
            raise ValueError(f"must be one of {', '.join(levels)}")
        return value.strip().lower()

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        if value.strip().lower() not in ("text", "json"):
            raise ValueError("must be text or json")
        return value.strip().lower()

    @field_validator("metrics_token")
    @classmethod
    def _metrics_token(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        value = value.strip()
        if len(value) < 16 or not value.isascii() or not value.isprintable():
            raise ValueError("must be at least 16 printable ASCII characters")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "must be an http:// or https:// address, e.g. https://tokens.example.com"
            )
        return value.strip().rstrip("/")

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _forwarded_allow_ips(cls, value: str) -> str:
        items = [item.strip() for item in value.split(",") if item.strip()]
        for item in items:
            if item == "*":
                continue
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address or network (e.g. 10.0.0.5, 10.0.0.0/8, *)"
                ) from None
        return ",".join(items)

    @property
    def secure_cookies(self) -> bool:
        return self.public_url is not None and self.public_url.startswith("https://")

    @model_validator(mode="after")
    def _floor_within_default(self) -> Settings:
        if self.gateway_min_completion_tokens > self.gateway_default_max_tokens:
            raise ValueError(
                "TOKENDESK_GATEWAY_MIN_COMPLETION_TOKENS must not exceed "
                "TOKENDESK_GATEWAY_DEFAULT_MAX_TOKENS"
            )
        return self

    @property
    def shutdown_calls_seconds(self) -> float:
        """How long calls and streams in flight may go on after SIGTERM before they are cut."""
        return self.shutdown_grace_seconds * SHUTDOWN_CALLS_SHARE

    @property
    def upstream_deadline_seconds(self) -> float:
        """How long a whole upstream call may last, reply or stream, before it is ended."""
        return self.reservation_ttl_seconds * UPSTREAM_DEADLINE_SHARE

    @model_validator(mode="after")
    def _calls_end_before_their_holds(self) -> Settings:
        if self.upstream_timeout_seconds >= self.upstream_deadline_seconds:
            raise ValueError(
                "TOKENDESK_UPSTREAM_TIMEOUT_SECONDS must be below the gateway's call deadline, "
                f"{UPSTREAM_DEADLINE_SHARE:.0%} of TOKENDESK_RESERVATION_TTL_SECONDS "
                f"({self.upstream_deadline_seconds:g} s): a call ends before its hold expires"
            )
        return self

    @model_validator(mode="after")
    def _deliveries_end_before_their_lease(self) -> Settings:
        longest = max(self.smtp_timeout_seconds, self.webhook_timeout_seconds)
        if self.notify_lease_seconds <= longest:
            raise ValueError(
                "TOKENDESK_NOTIFY_LEASE_SECONDS must exceed TOKENDESK_SMTP_TIMEOUT_SECONDS and "
                "TOKENDESK_WEBHOOK_TIMEOUT_SECONDS: a delivery ends before another worker may "
                "take it over"
            )
        return self

    @property
    def site_url(self) -> str:
        """The address links in notifications point at: the public URL, else the
        address this server listens on."""
        return self.public_url or f"http://{self.host}:{self.port}"

    def check_secret(self) -> None:
        """Refuse to run with a guessable session secret outside demo mode."""
        if not self.demo and (self.secret_key == PLACEHOLDER_SECRET or len(self.secret_key) < 16):
            raise InsecureSecret(
                "TOKENDESK_SECRET_KEY is unset, too short or left at its placeholder; set a long "
                "random value (or TOKENDESK_DEMO=1 for a local demo)"
            )

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
