"""Lists and tables of values bound as single parameters, on each backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select
from sqlalchemy.dialects import sqlite

from tests.factories import World
from tokendesk.accounts.models import User
from tokendesk.db import (
    Database,
    UTCDateTime,
    bound_rows,
    in_list,
    listed,
    rows_bound,
    sqlite_timestamp,
)


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
