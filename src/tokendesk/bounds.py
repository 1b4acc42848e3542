"""The bounds of every number tokendesk takes: ids, token amounts and usage.

Each interface takes its integers through the types here (API path, query and
body fields, the admin pages' forms and query strings, the usage API), so a
number the database cannot hold is refused, or found missing, before any SQL
sees it.

Why these figures. Every id and token column is a BIGINT (at most 2^63 - 1).
The balance row caches five figures whose sum is what is left (``remaining_of``)
and SQL computes that sum, so each column must stay far from the limit, not
merely inside it. A cap per write does not bound a column that writes add up
in (a period can hold any number of usage events, approvals or adjustments),
so each accumulating column also has a ceiling for the period, and a write that
would cross it is refused:

- allocation: one value, at most ``MAX_TOKENS``;
- granted, adjusted (either way) and used: at most ``BALANCE_CEILING`` each,
  checked by the ledger's credit, the approvals and the usage recorder;
- reserved: holds never exceed what remains, so at most the sum of the above.

Five columns of at most 10^15 keep every sum over one balance below 10^16,
hundreds of times inside a BIGINT.
"""

from __future__ import annotations

import re
from typing import Annotated, TypeGuard

from fastapi import Query
from pydantic import AfterValidator, Field

from tokendesk.errors import NotFound

DB_INT_MAX = 2**63 - 1
# An amount one write may move: a request, an approval, an adjustment, an allocation,
# a pool or the largest request an organization allows.
MAX_TOKENS = 10**12
# Tokens one usage event may report: prompt and completion together.
MAX_EVENT_TOKENS = 10**9
# How far granted, adjusted (either way) and used may go within one period.
BALANCE_CEILING = 10**15
MAX_OFFSET = 10_000_000

_ASCII_INTEGER = re.compile(r"[0-9]{1,30}")


def is_count(value: object, *, maximum: int = DB_INT_MAX) -> TypeGuard[int]:
    """Whether ``value`` is a whole number of tokens from 0 to ``maximum`` (a JSON
    boolean is not a number here, though Python counts it as one)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= maximum


def is_id(value: object) -> bool:
    """Whether ``value`` could be a row's id: a positive integer that fits a BIGINT."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= DB_INT_MAX


def parse_id(text: str | None) -> int | None:
    """A form's or query string's id: ASCII digits only, within the column; else None.

    ``int()`` and ``str.isdigit()`` take other scripts' digits ("٣", "²"), which no
    client means as an id.
    """
    number = parse_count(text)
    return number if number is not None and is_id(number) else None


def parse_count(text: str | None, *, maximum: int = DB_INT_MAX) -> int | None:
    """A whole number >= 0 written in ASCII digits, at most ``maximum``; else None."""
    if text is None:
        return None
    text = text.strip()
    if not _ASCII_INTEGER.fullmatch(text):
        return None
    number = int(text)
    return number if number <= maximum else None


def path_id(noun: str) -> AfterValidator:
    """For a path parameter naming a ``noun``: ``Annotated[int, path_id("user")]``.

    An id no row can have (0, negative, past a BIGINT) is simply not there: it answers
    the same 404 as any missing row, raised before the handler runs, and never
    reaches SQL (where PostgreSQL would refuse to bind it).
    """

    def exists(value: int) -> int:
        if not is_id(value):
            raise NotFound(f"{noun} {value} not found")
        return value

    return AfterValidator(exists)


# Body fields naming a row. Strict, so "5", 5.0 and true are refused, not coerced.
Id = Annotated[int, Field(strict=True, ge=1, le=DB_INT_MAX)]
# Query parameters naming a row (query strings are text, so not strict).
QueryId = Annotated[int, Query(ge=1, le=DB_INT_MAX)]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]
# Token amounts in bodies.
Tokens = Annotated[int, Field(strict=True, ge=0, le=MAX_TOKENS)]
PositiveTokens = Annotated[int, Field(strict=True, gt=0, le=MAX_TOKENS)]
EventTokens = Annotated[int, Field(strict=True, ge=0, le=MAX_EVENT_TOKENS)]
