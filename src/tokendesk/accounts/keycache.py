"""A short-lived cache of API key owners for the gateway's hot path.

A lookup costs a database round trip; at hundreds of calls per second that
round trip is most of the overhead. An entry is trusted for ``ttl`` seconds
after the database last confirmed it, so a revoked key or a deactivated user
stops working within that time even if an invalidation event were lost.

Entries in use are confirmed again in the background once half their life has
passed, many in one query, so a key in steady use never waits for the
database on the request path. Revocations also clear the whole cache at once
(:func:`credentials_changed`); a lookup that was in flight across such a clear
is not cached, so it cannot bring a revoked key back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts import identities
from tokendesk.accounts.auth import LAST_USED_RESOLUTION
from tokendesk.accounts.identities import NamedUser, Person
from tokendesk.accounts.integrations import IntegrationRef, integrations_by_hash
from tokendesk.accounts.models import ApiKey, Role, User
from tokendesk.accounts.security import hash_api_key, usable_key
from tokendesk.db import Database, log_failure, run_core
from tokendesk.errors import Conflict

log = logging.getLogger(__name__)


T = TypeVar("T")

# Confirmations per query: keeps the IN lists of one background refresh bounded.
REFRESH_BATCH = 500


@dataclass(frozen=True)
class KeyOwner:
    user_id: int
    organization_id: int
    role: Role
    email: str
    key_id: int | None = None  # None when the caller came through a session or a trusted header
    # The integration whose chat app named this caller, if one did.
    integration_id: int | None = None


class KeyCache:
    """Key owners by key hash, integrations by key hash, the people integrations name,
    and members named by a trusted proxy by email.

    Only answers that let a caller in are cached: a refusal (an unknown or
    deactivated person) is looked up again on the next call, so a person added
    or provisioned a moment ago is served at once. Unknown keys are the exception,
    cached like known ones, so guessing keys costs the guesser, not the database.
    """

    def __init__(
        self,
        database: Database,
        *,
        ttl_seconds: float,
        max_entries: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.database = database
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._clock = clock  # seconds, monotonic; entries' lifetimes are measured on it
        # cache key -> (trusted until, confirm again after, owner or None for "refuse")
        self._entries: dict[str, tuple[float, float, KeyOwner | None]] = {}
        self._integrations: dict[str, tuple[float, IntegrationRef | None]] = {}
        # Lookups in flight by cache key, shared by the callers that missed together.
        self._flights: dict[str, asyncio.Future[Any]] = {}
        self._due: set[str] = set()
        self._refresher: asyncio.Task[None] | None = None
        # Bumped by clear(): answers read before a revocation must not be cached after it.
        self._generation = 0
        # Keys used since the last flush, for the "last used" column; written in batches.
        self.used: dict[int, datetime] = {}
        self.integrations_used: dict[int, datetime] = {}
        self._noted: dict[int, float] = {}
        # Misses waiting for a lookup: key hash -> (generation when missed, answer).
        self._misses: dict[str, tuple[int, asyncio.Future[KeyOwner | None]]] = {}
        self._asking: dict[str, tuple[int, asyncio.Future[KeyOwner | None]]] = {}
        self._lookup: asyncio.Task[None] | None = None

    def _get(self, cache_key: str) -> tuple[bool, KeyOwner | None]:
        hit = self._entries.get(cache_key)
        if hit is None:
            return False, None
        now = self._clock()
        if hit[0] <= now:
            return False, None
        # People named by integrations ("x:") are simply looked up again once expired:
        # confirming them needs what the chat app sent, which the cache does not keep.
        if hit[1] <= now and cache_key not in self._due and not cache_key.startswith("x:"):
            self._due.add(cache_key)
            if self._refresher is None or self._refresher.done():
                self._refresher = asyncio.create_task(self._refresh())
        return True, hit[2]

    def _put(self, cache_key: str, owner: KeyOwner | None, *, confirmed: float) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[cache_key] = (confirmed + self.ttl, confirmed + self.ttl / 2, owner)

    def note_used(self, key_id: int) -> None:
        """Queue a "last used" stamp, at most one a minute per key: people read it to the minute."""
        now = self._clock()
        noted = self._noted.get(key_id)
        if noted is not None and now - noted < LAST_USED_RESOLUTION.total_seconds():
            return
        if len(self._noted) >= self.max_entries:
            self._noted.clear()
        self._noted[key_id] = now
        self.used[key_id] = datetime.now(UTC)

    def note_integration_used(self, integration_id: int) -> None:
        now = self._clock()
        key = -integration_id  # beside the keys' own ids in the once-a-minute bookkeeping
        noted = self._noted.get(key)
        if noted is not None and now - noted < LAST_USED_RESOLUTION.total_seconds():
            return
        self._noted[key] = now
        self.integrations_used[integration_id] = datetime.now(UTC)

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()
        self._integrations.clear()
        self._due.clear()

    async def _shared(self, cache_key: str, work: Callable[[], Awaitable[T]]) -> T:
        """``work``'s answer, computed once for every caller asking for ``cache_key`` at once."""
        flight = self._flights.get(cache_key)
        if flight is None:
            task: asyncio.Future[Any] = asyncio.ensure_future(work())
            self._flights[cache_key] = flight = task
            task.add_done_callback(lambda _: self._flights.pop(cache_key, None))
        # Shielded: a caller who goes away must not cancel the answer others wait for.
        answer: T = await asyncio.shield(flight)
        return answer

    async def integration_of_key(self, key: str) -> IntegrationRef | None:
        """The integration this ``tdi_`` key belongs to, or None if unknown or revoked."""
        key_hash = hash_api_key(key)
        hit = self._integrations.get(key_hash)
        if hit is not None and hit[0] > self._clock():
            return hit[1]

        async def look_up() -> IntegrationRef | None:
            generation, confirmed = self._generation, self._clock()
            found = await self.database.run(
                partial(integrations_by_hash, key_hashes=[key_hash]), write=False
            )
            integration = found.get(key_hash)
            if generation == self._generation:
                if len(self._integrations) >= self.max_entries:
                    self._integrations.clear()
                self._integrations[key_hash] = (confirmed + self.ttl, integration)
            return integration

        return await self._shared("i:" + key_hash, look_up)

    async def named_member(self, integration: IntegrationRef, named: NamedUser) -> KeyOwner:
        """The tokendesk user an integration's chat app names, linked or provisioned on
        first use; raises the domain's refusal (deactivated, not allowed, ...)."""
        cache_key = f"x:{integration.id}:{named.external_id or ''}:{named.email or ''}"
        found, owner = self._get(cache_key)
        if found and owner is not None:
            return owner

        async def look_up() -> KeyOwner:
            generation, confirmed = self._generation, self._clock()
            person = await self.database.run(
                partial(identities.find, integration=integration, named=named), write=False
            )
            if person is None:
                person = await self._resolve(integration, named)
            owner = _owner(person, integration)
            if generation == self._generation:
                self._put(cache_key, owner, confirmed=confirmed)
            return owner

        return await self._shared(cache_key, look_up)

    async def _resolve(self, integration: IntegrationRef, named: NamedUser) -> Person:
        # The one write on this path: linking or provisioning someone new. Two first calls
        # of one person on different instances race to insert them; the loser's unique
        # key fails, and its second try finds what the winner wrote.
        for attempt in (1, 2):
            try:
                async with self.database.transaction() as session:
                    return await identities.resolve(session, integration=integration, named=named)
            except (Conflict, IntegrityError):
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def owner_of_key(self, key: str) -> KeyOwner | None:
        """The key's owner, or None if the key is unknown, revoked or its owner inactive.

        Misses are looked up together: a burst of callers whose entries have all
        expired (the first calls after a quiet spell) costs a few queries, not one
        each, and callers of the same key share one lookup.
        """
        key_hash = hash_api_key(key)
        found, owner = self._get("k:" + key_hash)
        if found:
            return owner
        miss = self._misses.get(key_hash)
        if miss is None:
            miss = (self._generation, asyncio.get_running_loop().create_future())
            self._misses[key_hash] = miss
            if self._lookup is None or self._lookup.done():
                self._lookup = asyncio.create_task(self._look_up())
        # Shielded: a caller who goes away must not cancel the answer others wait for.
        return await asyncio.shield(miss[1])

    async def _look_up(self) -> None:
        # Misses arriving while a query runs wait for the next one (as group commits do).
        while self._misses:
            hashes = list(self._misses)[:REFRESH_BATCH]
            misses = {key_hash: self._misses.pop(key_hash) for key_hash in hashes}
            self._asking = misses
            confirmed = self._clock()
            try:
                # On SQLite a read on the loop itself: through the driver's thread a lookup
                # waits its turn on a busy loop several times, for a read of microseconds.
                owners = await self.database.run(
                    partial(_key_owners, key_hashes=hashes), write=False
                )
            except Exception as exc:
                for _, answer in misses.values():
                    if not answer.done():
                        answer.set_exception(exc)
                        answer.exception()  # retrieved here too: its callers may have gone
                continue
            for key_hash, (generation, answer) in misses.items():
                owner = owners.get(key_hash)
                # A clear() since the miss may be a revocation this answer predates.
                if generation == self._generation:
                    self._put("k:" + key_hash, owner, confirmed=confirmed)
                if not answer.done():
                    answer.set_result(owner)

    async def member(self, *, organization_id: int, email: str) -> KeyOwner | None:
        """The active member of ``organization_id`` with this email, if any."""
        email = email.lower()
        cache_key = f"e:{organization_id}:{email}"
        found, owner = self._get(cache_key)
        if found:
            return owner
        generation, confirmed = self._generation, self._clock()
        members = await self.database.run(
            partial(_members, organization_id=organization_id, emails=[email]), write=False
        )
        owner = members.get(email)
        if owner is not None and generation == self._generation:
            self._put(cache_key, owner, confirmed=confirmed)
        return owner

    async def _refresh(self) -> None:
        while self._due:
            # Entries fall due one by one as calls come in; gathering them for a moment
            # turns many one-key queries into a few. They stay valid meanwhile: due at
            # half their life, they expire only at the end of it.
            await asyncio.sleep(self.ttl / 10)
            due = list(self._due)[:REFRESH_BATCH]
            if not due:
                return  # cleared meanwhile
            self._due.difference_update(due)
            hashes = [cache_key[2:] for cache_key in due if cache_key.startswith("k:")]
            emails: dict[int, list[str]] = defaultdict(list)
            for cache_key in due:
                if cache_key.startswith("e:"):
                    organization, email = cache_key[2:].split(":", 1)
                    emails[int(organization)].append(email)
            generation, confirmed = self._generation, self._clock()
            try:
                owners, members = await self.database.run(
                    partial(_confirm, key_hashes=hashes, emails=emails), write=False
                )
            except Exception as error:
                # The entries simply expire; the next call looks its key up itself.
                log_failure(log, error, "confirming %d cached credentials failed", len(due))
                continue
            if generation != self._generation:
                continue
            for key_hash in hashes:
                self._put("k:" + key_hash, owners.get(key_hash), confirmed=confirmed)
            for organization_id, wanted in emails.items():
                for email in wanted:
                    owner = members[organization_id].get(email)
                    if owner is None:  # gone: refused from now on, looked up each time
                        self._entries.pop(f"e:{organization_id}:{email}", None)
                    else:
                        self._put(f"e:{organization_id}:{email}", owner, confirmed=confirmed)

    async def stop(self) -> None:
        for _, answer in [*self._misses.values(), *self._asking.values()]:
            answer.cancel()  # their callers see the cancellation rather than wait forever
        self._misses.clear()
        for task in (self._refresher, self._lookup):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._refresher = self._lookup = None


async def _confirm(
    session: AsyncSession, key_hashes: Collection[str], emails: Mapping[int, Collection[str]]
) -> tuple[dict[str, KeyOwner], dict[int, dict[str, KeyOwner]]]:
    owners = await _key_owners(session, key_hashes) if key_hashes else {}
    members = {
        organization_id: await _members(session, organization_id, wanted)
        for organization_id, wanted in emails.items()
    }
    return owners, members


async def _key_owners(session: AsyncSession, key_hashes: Collection[str]) -> dict[str, KeyOwner]:
    rows = await run_core(
        session,
        select(User.id, User.organization_id, User.role, User.email, ApiKey.id, ApiKey.key_hash)
        .join(ApiKey, ApiKey.user_id == User.id)
        .where(*usable_key(key_hashes)),
    )
    return {
        key_hash: KeyOwner(user_id, organization_id, Role(role), email, key_id)
        for user_id, organization_id, role, email, key_id, key_hash in rows
    }


async def _members(
    session: AsyncSession, organization_id: int, emails: Collection[str]
) -> dict[str, KeyOwner]:
    """Active members by lower-cased email."""
    rows = await run_core(
        session,
        select(User.id, User.organization_id, User.role, User.email).where(
            User.email.in_(emails),
            User.organization_id == organization_id,
            User.is_active.is_(True),
        ),
    )
    return {
        email.lower(): KeyOwner(user_id, organization, Role(role), email)
        for user_id, organization, role, email in rows
    }


def _owner(person: Person, integration: IntegrationRef) -> KeyOwner:
    return KeyOwner(
        person.user_id,
        person.organization_id,
        person.role,
        person.email,
        integration_id=integration.id,
    )


CREDENTIALS_CHANGED = "credentials.changed"


def credentials_changed(session: AsyncSession, *, user_id: int | None) -> None:
    """Tell every server process (after commit) to forget cached key owners.

    Sent when a key (or an integration) is revoked or a user is deactivated or changes role, so the
    gateway's cache never lets a revoked key through longer than one event hop;
    the user's open event streams hear of it too.
    """
    from tokendesk.events.bus import Event, access_changed, emit

    emit(session, Event(type=CREDENTIALS_CHANGED, data={"user_id": user_id}, audience="system"))
    if user_id is not None:  # None: an integration's key, nobody's own streams
        access_changed(session, user_id)
