"""Lists and tables of values bound as single parameters, on each backend."""

from __future__ import annotations

from sqlalchemy import select

from tests.factories import World
from tokendesk.accounts.models import User
from tokendesk.db import Database, bound_rows, in_list, listed, rows_bound


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
