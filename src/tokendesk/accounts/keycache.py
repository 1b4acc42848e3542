"""A short-lived cache of API key owners for the gateway's hot path.

A lookup costs a database round trip; at hundreds of calls per second per user
that round trip is most of the overhead. Entries live a few seconds, so a
revoked key or a deactivated user stops working within that time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.models import ApiKey, Role, User
from tokendesk.accounts.security import hash_api_key, usable_key


@dataclass(frozen=True)
class KeyOwner:
    user_id: int
    organization_id: int
    role: Role
    email: str
    key_id: int | None = None  # None when the caller came through a session or a trusted header


class KeyCache:
    def __init__(self, *, ttl_seconds: float, max_entries: int = 50_000) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, KeyOwner | None]] = {}
        # Keys used since the last flush, for the "last used" column; written in batches.
        self.used: dict[int, datetime] = {}

    def _get(self, cache_key: str) -> tuple[bool, KeyOwner | None]:
        hit = self._entries.get(cache_key)
        if hit is None or hit[0] < time.monotonic():
            return False, None
        return True, hit[1]

    def _put(self, cache_key: str, owner: KeyOwner | None) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[cache_key] = (time.monotonic() + self.ttl, owner)

    def clear(self) -> None:
        self._entries.clear()

    def cached_owner(self, key: str) -> KeyOwner | None:
        """The owner if a fresh positive entry exists; None means "look it up"."""
        return self._get("k:" + hash_api_key(key))[1]

    async def owner_of_key(self, session: AsyncSession, key: str) -> KeyOwner | None:
        key_hash = hash_api_key(key)
        found, owner = self._get("k:" + key_hash)
        if found:
            return owner
        row = (
            await session.execute(
                select(User.id, User.organization_id, User.role, User.email, ApiKey.id)
                .join(ApiKey, ApiKey.user_id == User.id)
                .where(*usable_key(key_hash))
            )
        ).first()
        owner = None if row is None else KeyOwner(row[0], row[1], Role(row[2]), row[3], row[4])
        self._put("k:" + key_hash, owner)
        return owner

    async def user_by_email(
        self, session: AsyncSession, *, organization_id: int, email: str
    ) -> KeyOwner | None:
        cache_key = f"e:{organization_id}:{email.lower()}"
        found, owner = self._get(cache_key)
        if found:
            return owner
        row = (
            await session.execute(
                select(User.id, User.organization_id, User.role, User.email).where(
                    func.lower(User.email) == email.lower(),
                    User.organization_id == organization_id,
                    User.is_active.is_(True),
                )
            )
        ).first()
        owner = None if row is None else KeyOwner(row[0], row[1], Role(row[2]), row[3])
        self._put(cache_key, owner)
        return owner


CREDENTIALS_CHANGED = "credentials.changed"


def credentials_changed(session: AsyncSession, *, user_id: int) -> None:
    """Tell every server process (after commit) to forget cached key owners.

    Sent when a key is revoked or a user is deactivated or changes role, so the
    gateway's cache never lets a revoked key through longer than one event hop.
    """
    from tokendesk.events.bus import Event, emit

    emit(session, Event(type=CREDENTIALS_CHANGED, data={"user_id": user_id}, audience="system"))
