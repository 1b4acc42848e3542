"""The gateway's key cache: warm while in use, never trusted past its time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import event, update

from tests.factories import World
from tokendesk.accounts.keycache import KeyCache
from tokendesk.accounts.models import ApiKey
from tokendesk.accounts.security import hash_api_key
from tokendesk.db import Database, utcnow


async def revoke_quietly(database: Database, user_id: int) -> None:
    """Revoke without the invalidation event, as if that event were lost."""
    async with database.transaction() as s:
        await s.execute(update(ApiKey).where(ApiKey.user_id == user_id).values(revoked_at=utcnow()))


TTL = 2.0


class Clock:
    """A monotonic clock the test moves by hand: entry lifetimes without waiting."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def short_lived(database: Database, clock: Clock) -> AsyncIterator[KeyCache]:
    """A cache whose entries live 2 s, due for confirmation after 1 s (of ``clock``)."""
    keys = KeyCache(database, ttl_seconds=TTL, clock=clock)
    yield keys
    await keys.stop()


async def confirmed(keys: KeyCache, clock: Clock, key: str) -> None:
    """Use the key past half its entry's life, and wait for the background confirmation."""
    clock.now += TTL / 2 + 0.05
    await keys.owner_of_key(key)
    assert keys._refresher is not None
    await keys._refresher


class TestOwnerOfKey:
    async def test_key_in_use_is_confirmed_again_in_the_background(
        self, short_lived: KeyCache, clock: Clock, database: Database, world: World
    ) -> None:
        assert (await short_lived.owner_of_key(world.alice.key)) is not None
        await revoke_quietly(database, world.alice.id)
        await confirmed(short_lived, clock, world.alice.key)
        # Still well within the first entry's life, but the database has spoken.
        assert (await short_lived.owner_of_key(world.alice.key)) is None

    async def test_confirmed_key_outlives_its_first_entry_without_a_lookup(
        self, short_lived: KeyCache, clock: Clock, world: World
    ) -> None:
        first_lookup = clock.now
        owner = await short_lived.owner_of_key(world.bob.key)
        await confirmed(short_lived, clock, world.bob.key)
        # Past the moment the first entry would have expired.
        clock.now = first_lookup + TTL + 0.05
        assert short_lived._get("k:" + hash_api_key(world.bob.key)) == (True, owner)

    async def test_an_entry_not_confirmed_expires_with_its_life(
        self, short_lived: KeyCache, clock: Clock, database: Database, world: World
    ) -> None:
        assert (await short_lived.owner_of_key(world.amy.key)) is not None
        await revoke_quietly(database, world.amy.id)
        clock.now += TTL + 0.01  # never used meanwhile, so never confirmed again
        assert short_lived._get("k:" + hash_api_key(world.amy.key)) == (False, None)
        assert (await short_lived.owner_of_key(world.amy.key)) is None

    async def test_lookup_in_flight_across_a_clear_is_not_cached(
        self, database: Database, world: World
    ) -> None:
        keys = KeyCache(database, ttl_seconds=60)
        lookup = asyncio.create_task(keys.owner_of_key(world.alice.key))
        await asyncio.sleep(0)  # the lookup is waiting for the database
        keys.clear()  # a revocation arrives meanwhile
        assert (await lookup) is not None
        assert keys._get("k:" + hash_api_key(world.alice.key)) == (False, None)


class TestMisses:
    @pytest.fixture
    def key_queries(self, database: Database) -> Iterator[list[str]]:
        """The statements that read API keys, as they run."""
        seen: list[str] = []

        def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            if "api_keys" in statement:
                seen.append(statement)

        engine = database.read_engine.sync_engine
        event.listen(engine, "before_cursor_execute", record)
        yield seen
        event.remove(engine, "before_cursor_execute", record)

    async def test_a_burst_of_misses_is_looked_up_together(
        self, database: Database, world: World, key_queries: list[str]
    ) -> None:
        keys = KeyCache(database, ttl_seconds=60)
        people = [world.alice, world.bob, world.amy, world.nora, world.admin, world.owner]
        owners = await asyncio.gather(*(keys.owner_of_key(p.key) for p in people * 3))
        assert [owner.user_id if owner else None for owner in owners] == [p.id for p in people] * 3
        # All were waiting before the lookup task first ran: they share its query.
        assert len(key_queries) <= 2
        assert (await keys.owner_of_key("td_unknown")) is None
        await keys.stop()

    async def test_a_caller_going_away_leaves_the_others_their_answer(
        self, database: Database, world: World
    ) -> None:
        keys = KeyCache(database, ttl_seconds=60)
        leaving = asyncio.create_task(keys.owner_of_key(world.alice.key))
        staying = asyncio.create_task(keys.owner_of_key(world.alice.key))
        await asyncio.sleep(0)
        leaving.cancel()
        owner = await staying
        assert owner is not None and owner.user_id == world.alice.id
        assert leaving.cancelled()
        await keys.stop()


class TestNoteUsed:
    async def test_a_key_is_stamped_at_most_once_a_minute(self, database: Database) -> None:
        keys = KeyCache(database, ttl_seconds=5)
        keys.note_used(7)
        first = keys.used.pop(7)
        keys.note_used(7)
        assert keys.used == {}
        keys.note_used(8)
        assert set(keys.used) == {8} and keys.used[8] >= first
