"""SQLite's quick way to hold: each request on a plain connection, on the loop itself.

Inside :meth:`Database.quick_write` each statement costs microseconds and nothing
else writes until it commits, so what it reads of a balance stays true.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import partial

from tokendesk.db import FALLBACK, Database, Fallback, sqlite_timestamp, utcnow
from tokendesk.errors import AppError
from tokendesk.ledger.holds.base import Hold, HoldRequest, QuickResult, holdable
from tokendesk.ledger.models import GIVEN_SQL, REMAINING_SQL, ReservationStatus
from tokendesk.ledger.reservations import insufficient

# The hold of ledger.reserve, spelled for SQLite's own driver: the same conditional
# UPDATE, returning the balance it leaves, then the reservation row.
_HOLD_SQL = (
    "UPDATE balances SET reserved = reserved + ?1, updated_at = ?2 "
    f"WHERE user_id = ?3 AND period_end > ?2 AND ?1 <= {REMAINING_SQL} "
    f"RETURNING {REMAINING_SQL}, {GIVEN_SQL}, period_end"
)
_BALANCE_SQL = f"SELECT {REMAINING_SQL}, reserved, period_end > ?2 FROM balances WHERE user_id = ?1"
_RESERVATION_SQL = (
    "INSERT INTO reservations (organization_id, user_id, amount, status, created_at, expires_at)"
    f" VALUES (?, ?, ?, '{ReservationStatus.HELD.value}', ?, ?)"
)


class SqliteQuickHolds:
    """:func:`hold_each` in one quick write; FALLBACK as a whole where the quick path
    ran nothing (another process is writing)."""

    def __init__(self, database: Database, *, ttl_seconds: int) -> None:
        self.database = database
        self.ttl_seconds = ttl_seconds

    async def hold(self, requests: Sequence[HoldRequest]) -> list[QuickResult] | Fallback:
        return await self.database.quick_write(
            partial(hold_each, requests=requests, ttl_seconds=self.ttl_seconds)
        )


def hold_each(
    connection: sqlite3.Connection, requests: Sequence[HoldRequest], *, ttl_seconds: int
) -> list[QuickResult]:
    """Hold or refuse each request in turn, in batch order; FALLBACK where only the
    general path can decide (no balance, or its period has ended: it rolls periods
    over)."""
    now = utcnow()
    at = sqlite_timestamp(now)
    expires = sqlite_timestamp(now + timedelta(seconds=ttl_seconds))
    results: list[QuickResult] = []
    for request in requests:
        result = _hold_one(connection, request, at) if holdable(request) else FALLBACK
        if isinstance(result, tuple):
            amount, (remaining, given, period_end) = result
            row = (request.organization_id, request.user_id, amount, at, expires)
            reservation_id = connection.execute(_RESERVATION_SQL, row).lastrowid
            assert reservation_id is not None
            resets_at = datetime.fromisoformat(period_end).replace(tzinfo=UTC)
            results.append(Hold(reservation_id, amount, remaining, given, resets_at))
        else:
            results.append(result)
    return results


# What the hold returns of the balance it leaves: remaining, given and the period's end.
_Left = tuple[int, int, str]


def _hold_one(
    connection: sqlite3.Connection, request: HoldRequest, at: str
) -> tuple[int, _Left] | AppError | Fallback:
    """The tokens held on the request's balance and the balance left, its refusal, or
    FALLBACK (see hold_each)."""
    left = connection.execute(_HOLD_SQL, (request.amount, at, request.user_id)).fetchall()
    if left:
        return request.amount, left[0]
    balance = connection.execute(_BALANCE_SQL, (request.user_id, at)).fetchone()
    if balance is None or not balance[2]:
        return FALLBACK
    remaining, reserved, _ = balance
    if remaining < request.least:
        return insufficient(remaining=remaining, needed=request.least, held=reserved)
    # Less remains than the whole amount, but enough for the least that will do.
    left = connection.execute(_HOLD_SQL, (remaining, at, request.user_id)).fetchall()
    if not left:
        return FALLBACK
    return int(remaining), left[0]
