"""Lists and tables of values bound as single parameters, on each backend; SQLite's quick
transactions."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import UTC, datetime, timedelta, timezone
from functools import partial

import pytest
from sqlalchemy import make_url, select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tests.factories import World
from tokendesk.accounts.models import User
from tokendesk.db import (
    CHECKPOINT_FEW_FRAMES,
    CHECKPOINT_PASSES,
    FALLBACK,
    Database,
    Fallback,
    UTCDateTime,
    after_commit,
    bound_rows,
    in_list,
    listed,
    rows_bound,
    run_core,
    sqlite_timestamp,
)
from tokendesk.ledger import service as ledger


class TestBoundRows:
    async def test_every_row_comes_back_with_its_columns(self, database: Database) -> None:
        async with database.transaction(write=False) as s:
            dialect = s.get_bind().dialect.name
            pairs = bound_rows(dialect, "pairs", "a", "b")
            rows = [(3, -30), (1, 10), (2, 2**40)]
            params = rows_bound(dialect, "pairs", ("a", "b"), rows)
            result = await s.execute(select(pairs.c.a, pairs.c.b).order_by(pairs.c.a), params)
            assert [tuple(row) for row in result] == sorted(rows)

    async def test_no_rows_join_nothing(self, database: Database) -> None:
        async with database.transaction(write=False) as s:
            dialect = s.get_bind().dialect.name
            pairs = bound_rows(dialect, "pairs", "a", "b")
            params = rows_bound(dialect, "pairs", ("a", "b"), [])
            assert (await s.execute(select(pairs.c.a), params)).all() == []


class TestInList:
    async def test_matches_exactly_the_listed_values(
        self, database: Database, world: World
    ) -> None:
        async with database.transaction(write=False) as s:
            dialect = s.get_bind().dialect.name
            everyone = (await s.scalars(select(User.id).order_by(User.id))).all()
            wanted = set(everyone[::2])
            query = select(User.id).where(in_list(dialect, User.id)).order_by(User.id)
            found = await s.scalars(query, {"ids": listed(dialect, wanted)})
            assert set(found) == wanted


class TestSqliteTimestamp:
    def test_is_the_text_sqlalchemy_writes_for_the_utc_time(self) -> None:
        written = sqlite.DATETIME().bind_processor(sqlite.dialect())
        assert written is not None
        berlin = timezone(timedelta(hours=1))
        for value in (
            datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            datetime(2026, 3, 29, 1, 59, 59, 999_999, tzinfo=berlin),
            datetime(1, 1, 1, tzinfo=UTC),
        ):
            naive = value.astimezone(UTC).replace(tzinfo=None)
            assert sqlite_timestamp(value) == written(naive)

    def test_a_utc_column_stores_exactly_that_text(self) -> None:
        process = UTCDateTime().bind_processor(sqlite.dialect())
        value = datetime(2026, 11, 28, 23, 0, tzinfo=UTC)
        assert process(value) == sqlite_timestamp(value) == "2026-11-28 23:00:00.000000"
        with pytest.raises(ValueError):
            process(datetime(2026, 11, 28))


ADJUST = text("UPDATE balances SET adjusted = adjusted + 7 WHERE user_id = :user")


def adjust_on(connection: sqlite3.Connection, user_id: int) -> None:
    """ADJUST, on a plain connection (a quick write's)."""
    connection.execute(str(ADJUST).replace(":user", "?"), (user_id,))


async def adjusted(database: Database, user_id: int) -> int:
    async with database.transaction(write=False) as s:
        return (await ledger.get_balance(s, user_id=user_id)).adjusted


class TestQuickTransaction:
    """Core statements on the quick connection, in one turn of the loop (SQLite)."""

    async def test_commits_the_statements_then_runs_what_waits_for_the_commit(
        self, database: Database, world: World, backend: str
    ) -> None:
        seen: list[int] = []

        async def work(session: AsyncSession) -> int:
            result = await run_core(session, ADJUST, {"user": world.nora.id})
            after_commit(session, lambda: seen.append(1))
            return result.rowcount

        result = await database.quick_transaction(work)
        if backend == "postgres":
            assert (result, seen) == (FALLBACK, [])  # no shortcut: nothing ran
            return
        assert (result, seen) == (1, [1])
        assert await adjusted(database, world.nora.id) == 7

    async def test_work_needing_more_than_core_statements_is_undone_and_left_to_the_caller(
        self, database: Database, world: World, sqlite_only: None
    ) -> None:
        seen: list[int] = []

        async def work(session: AsyncSession) -> int:
            await run_core(session, ADJUST, {"user": world.nora.id})
            after_commit(session, lambda: seen.append(1))
            # The ORM would need a connection of its own: the quick path gives up.
            await ledger.get_balance(session, user_id=world.nora.id)
            return 1

        assert await database.quick_transaction(work) is FALLBACK
        assert (await adjusted(database, world.nora.id), seen) == (0, [])

    async def test_unflushed_orm_changes_make_it_give_way_rather_than_be_lost(
        self, database: Database, world: World, sqlite_only: None
    ) -> None:
        async def work(session: AsyncSession) -> int:
            await run_core(session, ADJUST, {"user": world.nora.id})
            session.add(User(organization_id=world.org_id, email="late@example.com", name="L"))
            return 1

        assert await database.quick_transaction(work) is FALLBACK
        assert await adjusted(database, world.nora.id) == 0

    async def test_work_returning_none_is_committed_and_its_none_returned(
        self, database: Database, world: World, sqlite_only: None
    ) -> None:
        async def work(session: AsyncSession) -> None:
            await run_core(session, ADJUST, {"user": world.nora.id})

        assert await database.quick_transaction(work) is None
        assert await adjusted(database, world.nora.id) == 7

    async def test_nothing_else_runs_on_the_loop_while_the_transaction_is_open(
        self, database: Database, world: World, sqlite_only: None
    ) -> None:
        order: list[str] = []

        async def work(session: AsyncSession) -> int:
            asyncio.get_running_loop().call_soon(order.append, "other task")
            await run_core(session, ADJUST, {"user": world.nora.id})
            after_commit(session, lambda: order.append("committed"))
            return 1

        assert await database.quick_transaction(work) == 1
        await asyncio.sleep(0)
        assert order == ["committed", "other task"]

    async def test_an_error_undoes_the_work_and_reaches_the_caller(
        self, database: Database, world: World, sqlite_only: None
    ) -> None:

        async def work(session: AsyncSession) -> None:
            await run_core(session, ADJUST, {"user": world.nora.id})
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            await database.quick_transaction(work)
        assert await adjusted(database, world.nora.id) == 0
        assert await database.quick_write(lambda connection: 1) == 1  # usable again

    async def test_a_failed_commit_is_rolled_back(
        self, database: Database, world: World, sqlite_only: None
    ) -> None:

        async def work(session: AsyncSession) -> None:
            await run_core(session, ADJUST, {"user": world.nora.id})
            # A deferred foreign key is checked at COMMIT, which then fails.
            await run_core(session, text("PRAGMA defer_foreign_keys = ON"))
            await run_core(
                session,
                text("UPDATE users SET team_id = 999999 WHERE id = :user"),
                {"user": world.nora.id},
            )

        with pytest.raises(IntegrityError):
            await database.quick_transaction(work)
        assert await adjusted(database, world.nora.id) == 0
        assert await database.quick_write(lambda connection: 1) == 1  # not left in a transaction

    async def test_gives_way_at_once_to_another_process_writing(
        self, database: Database, world: World, sqlite_only: None
    ) -> None:
        other = sqlite3.connect(make_url(database.url).database, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            result = await database.quick_transaction(
                lambda session: run_core(session, ADJUST, {"user": world.nora.id})
            )
            assert result is FALLBACK
            assert time.monotonic() - started < 1  # did not wait for the lock
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert await adjusted(database, world.nora.id) == 0

    async def test_quick_writes_are_checkpointed_soon_after(
        self, database: Database, world: World, sqlite_only: None
    ) -> None:
        path = make_url(database.url).database
        quick = Database(database.url, checkpoint_delay=0.01)

        # Each quick write adds a frame or more to the WAL, which SQLite starts over only
        # once everything in it has been checkpointed into the database file.
        try:
            for _ in range(100):
                await quick.quick_write(partial(adjust_on, user_id=world.nora.id))
                await asyncio.sleep(0.002)
        finally:
            await quick.dispose()
        probe = sqlite3.connect(path, isolation_level=None)
        try:
            busy, frames, copied = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            probe.close()
        assert busy == 0 and frames == copied
        assert frames < 50  # started over since the first of the hundred writes
        assert await adjusted(database, world.nora.id) == 7 * 100

    async def test_the_wal_starts_over_under_steady_quick_writes(
        self, database: Database, world: World, sqlite_only: None
    ) -> None:
        path = make_url(database.url).database
        quick = Database(database.url, checkpoint_delay=0.05)

        # Writes never stop long enough for a checkpoint alone to catch up with them.
        writes = 0
        try:
            deadline = time.monotonic() + 0.6
            while time.monotonic() < deadline:
                await quick.quick_write(partial(adjust_on, user_id=world.nora.id))
                writes += 1
                await asyncio.sleep(0)
        finally:
            await quick.dispose()
        probe = sqlite3.connect(path, isolation_level=None)
        try:
            _, frames, _ = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            probe.close()
        assert writes > 200
        assert frames < writes / 2  # started over since most of them
        assert await adjusted(database, world.nora.id) == 7 * writes

    async def test_writers_are_held_back_only_for_the_last_of_a_checkpoint(
        self, database: Database, world: World, sqlite_only: None
    ) -> None:
        quick = Database(database.url, checkpoint_delay=0.05)
        passes: list[tuple[bool, int, int, int]] = []  # writers held back?, and the result
        assert quick.quick_path is not None
        checkpoint = quick.quick_path._wal_checkpoint

        async def watched() -> tuple[int, int, int]:
            held = quick._write_lock is not None and quick._write_lock.locked()
            busy, frames, copied = await checkpoint()
            passes.append((held, busy, frames, copied))
            return busy, frames, copied

        quick.quick_path._wal_checkpoint = watched  # type: ignore[method-assign]

        try:
            # Writes for a while, and on a busy machine until some checkpoint got as far
            # as holding the writers back (bounded all the same).
            started = time.monotonic()
            while time.monotonic() < started + 0.6 or (
                not any(held for held, *_ in passes) and time.monotonic() < started + 10
            ):
                await quick.quick_write(partial(adjust_on, user_id=world.nora.id))
                await asyncio.sleep(0)
        finally:
            await quick.dispose()
        rounds: list[list[tuple[bool, int, int, int]]] = [[]]
        for result in passes:
            rounds[-1].append(result)
            if result[0]:
                rounds.append([])
        finished = [r for r in rounds if r and r[-1][0] and not any(p[1] for p in r)]
        assert finished, passes
        for checkpoint_round in finished:
            *free, last = checkpoint_round
            found = free[0][2]  # the bulk: what the first pass found
            if found <= CHECKPOINT_FEW_FRAMES:
                continue  # little to copy: one pass, then the last with writers held
            # The bulk was copied while the writers carried on, then at least what they
            # added meanwhile; they waited only for what came during the last free
            # pass, far less than the bulk.
            assert len(free) >= 2, checkpoint_round
            waited_for = last[2] - free[-1][3]
            assert waited_for < found, checkpoint_round

    @pytest.mark.parametrize(
        ("results", "free_passes"),
        [
            # Each pass finds less: stop once one finds at most a few frames.
            ([(0, 3000, 3000), (0, 3100, 3100), (0, 3120, 3120)], 3),
            # Another checkpoint was running: that pass tells nothing.
            ([(0, 3000, 3000), (1, -1, -1), (0, 3010, 3010)], 3),
            # The WAL started over between passes: all its frames are new.
            ([(0, 3000, 3000), (0, 20, 20)], 2),
            ([(0, 3000, 3000), (0, 400, 400), (0, 420, 420)], 3),
            # A reader kept frames from being copied: they are still to copy.
            ([(0, 3000, 2000), (0, 3010, 3010), (0, 3020, 3020)], 3),
            # Writers never slow down: at most CHECKPOINT_PASSES passes all the same.
            ([(0, 1000 * n, 1000 * n) for n in range(1, 9)], CHECKPOINT_PASSES),
        ],
    )
    async def test_a_checkpoint_copies_while_writers_carry_on_until_a_pass_finds_little(
        self,
        database: Database,
        sqlite_only: None,
        results: list[tuple[int, int, int]],
        free_passes: int,
    ) -> None:
        quick = Database(database.url, checkpoint_delay=0)
        script = iter(results)
        held: list[bool] = []

        async def scripted() -> tuple[int, int, int]:
            held.append(quick._write_lock is not None and quick._write_lock.locked())
            return next(script, (0, 0, 0))

        assert quick.quick_path is not None
        quick.quick_path._wal_checkpoint = scripted  # type: ignore[method-assign]
        try:
            await quick.quick_path._checkpoint_later()
        finally:
            await quick.dispose()
        assert held == [False] * free_passes + [True]


class TestQuickRead:
    async def test_reads_committed_rows_on_the_loop(
        self, database: Database, world: World, backend: str
    ) -> None:
        async def emails(session: AsyncSession) -> set[str]:
            rows = await run_core(session, select(User.email).where(User.id == world.nora.id))
            return set(rows.scalars())

        found = await database.quick_read(emails)
        if backend == "postgres":
            assert found is FALLBACK  # no shortcut: nothing ran
            return
        assert found == {world.nora.email}

    async def test_does_not_see_a_write_in_progress(
        self, database: Database, world: World, sqlite_only: None
    ) -> None:

        async def nora_adjusted(session: AsyncSession) -> int:
            query = text("SELECT adjusted FROM balances WHERE user_id = :user")
            return int((await run_core(session, query, {"user": world.nora.id})).scalar_one())

        async def write_then_read(session: AsyncSession) -> int | Fallback:
            await run_core(session, ADJUST, {"user": world.nora.id})
            return await database.quick_read(nora_adjusted)

        assert await database.quick_transaction(write_then_read) == 0
        assert await database.quick_read(nora_adjusted) == 7

    async def test_reads_started_together_each_get_their_answer(
        self, database: Database, world: World, sqlite_only: None
    ) -> None:
        async def count(session: AsyncSession) -> int:
            return int((await run_core(session, text("SELECT count(*) FROM users"))).scalar_one())

        answers = await asyncio.gather(*(database.quick_read(count) for _ in range(5)))
        assert len(set(answers)) == 1 and FALLBACK not in answers

    async def test_work_needing_more_than_core_statements_is_left_to_the_caller(
        self, database: Database, world: World, sqlite_only: None
    ) -> None:

        async def work(session: AsyncSession) -> int:
            return (await ledger.get_balance(session, user_id=world.nora.id)).adjusted

        assert await database.quick_read(work) is FALLBACK
