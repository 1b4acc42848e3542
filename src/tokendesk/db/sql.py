"""SQL helpers: lists and tables of values bound as one parameter, on each backend."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    String,
    any_,
    bindparam,
    func,
    literal_column,
    select,
)
from sqlalchemy.dialects import postgresql


def in_list(
    dialect: str, column: Any, name: str | None = "ids", *, values: Iterable[Any] | None = None
) -> ColumnElement[bool]:
    """``column`` is in a list bound as one parameter: an array on PostgreSQL, a JSON
    list read through ``json_each`` on SQLite.

    One parameter, not one per value: nothing is rendered per value, no driver
    limit on the number of parameters applies, and a statement built once serves
    every list. Without ``values`` the list is bound at execution time under
    ``name`` (see :func:`listed`); with them it is bound now.
    """
    item = String() if isinstance(column.type, String) else BigInteger()
    type_: Any = postgresql.ARRAY(item) if dialect == "postgresql" else String()
    if values is None:
        param = bindparam(name, type_=type_)
    else:
        param = bindparam(None, listed(dialect, values), type_=type_)
    if dialect == "postgresql":
        return column == any_(param)
    return column.in_(select(literal_column("value")).select_from(func.json_each(param)))


def listed(dialect: str, values: Iterable[Any]) -> Any:
    """The value of an :func:`in_list` parameter for ``values``."""
    ordered = sorted(values)
    return ordered if dialect == "postgresql" else json.dumps(ordered)


def bound_rows(dialect: str, name: str, *columns: str) -> Any:
    """A derived table ``name`` of integer ``columns``, all its rows bound at once.

    The table form of :func:`in_list`, for set-based statements that join to a
    row of values per target (``UPDATE ... FROM``): on PostgreSQL one array per
    column, unnested side by side; on SQLite one JSON list of rows read through
    ``json_each``. Bind the rows with :func:`rows_bound`.
    """
    if dialect == "postgresql":
        arrays = [
            bindparam(f"{name}_{column}", type_=postgresql.ARRAY(BigInteger()))
            for column in columns
        ]
        return func.unnest(*arrays).table_valued(*columns).render_derived(name=name)
    value: ColumnElement[Any] = literal_column("value")
    return (
        select(
            *(
                func.json_extract(value, literal_column(f"'$[{i}]'")).label(column)
                for i, column in enumerate(columns)
            )
        )
        .select_from(func.json_each(bindparam(name, type_=String())))
        # No limit, but a subquery with one is materialized rather than merged into
        # the statement: SQLite then reads these rows first and finds each target by
        # its key, instead of scanning the rows once per target an index offers.
        .limit(-1)
        .subquery(name)
    )


def rows_bound(
    dialect: str, name: str, columns: Sequence[str], rows: Iterable[Sequence[int]]
) -> dict[str, Any]:
    """The parameters of a :func:`bound_rows` table holding ``rows``."""
    listed_rows = [list(row) for row in rows]
    if dialect == "postgresql":
        return {
            f"{name}_{column}": [row[i] for row in listed_rows] for i, column in enumerate(columns)
        }
    return {name: json.dumps(listed_rows)}
