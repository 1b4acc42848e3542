"""Settings: one class, environment prefix ``TOKENDESK_``, safe local defaults."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRET = "change-me"


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
    # How long a gateway hold may live before the scheduler releases it.
    reservation_ttl_seconds: int = 600
    # How often the in-server scheduler looks for ended periods and stale holds.
    scheduler_interval_seconds: float = 30.0
    scheduler_enabled: bool = True
    log_level: str = "info"
    # "auto": PostgreSQL LISTEN/NOTIFY on PostgreSQL (events cross processes), in-process on SQLite.
    event_bus: str = "auto"

    def check_secret(self) -> None:
        """Refuse to serve with a guessable session secret outside demo mode."""
        if not self.demo and (self.secret_key == PLACEHOLDER_SECRET or len(self.secret_key) < 16):
            raise SystemExit(
                "TOKENDESK_SECRET_KEY is unset, too short or left at its placeholder; set a long "
                "random value (or TOKENDESK_DEMO=1 for a local demo)"
            )

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
