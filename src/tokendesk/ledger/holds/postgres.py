"""PostgreSQL's quick way to hold: a whole batch in one statement, one round trip."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta
from functools import cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    union_all,
    update,
)

from tokendesk.db import FALLBACK, Database, UTCDateTime, bound_rows, rows_bound, utcnow
from tokendesk.ledger.holds.base import Hold, HoldRequest, QuickResult, holdable
from tokendesk.ledger.models import (
    BALANCES,
    GIVEN,
    REMAINING,
    RESERVATIONS,
    ReservationStatus,
)
from tokendesk.ledger.reservations import insufficient

CALLS = ("org", "uid", "amount", "least")


@cache
def _hold_in_one_statement() -> Any:
    """Hold what each user's calls want where that can be decided at once, insert their
    reservations, and return the users refused, in one statement.

    A user's calls are held in full where their total fits, and a user's only call
    in the batch down to what remains where that is at least its ``least``; every
    call of a user whose remaining covers none of them is refused. The rest (a
    user's several calls that fit only in part, an ended period, no balance) is
    left for the general path. Rows are ``(id, user, amount, remaining, None, given,
    period end)`` per hold, with the balance as the batch leaves it, and ``(None, user,
    None, remaining, reserved, None, None)`` per user refused.
    """
    now = bindparam("now", type_=UTCDateTime())
    calls = bound_rows("postgresql", "calls", *CALLS)
    wanted = (
        select(
            calls.c.uid,
            func.sum(calls.c.amount).label("total"),
            func.min(calls.c.least).label("least"),
            func.count().label("calls"),
        )
        .group_by(calls.c.uid)
        .cte("wanted")
    )
    # The rows are locked in user order first, as every other batch locks them. What
    # this reads is each balance as it stands once locked, and stays so until the
    # statement ends: the decisions below are exact.
    locked = (
        select(BALANCES.c.user_id, REMAINING.label("remaining"), BALANCES.c.reserved)
        .where(BALANCES.c.user_id.in_(select(wanted.c.uid)), BALANCES.c.period_end > now)
        .order_by(BALANCES.c.user_id)
        .with_for_update()
        .cte("locked")
    )
    fits = wanted.c.total <= locked.c.remaining
    decided = (
        select(
            wanted.c.uid,
            case((fits, wanted.c.total), else_=locked.c.remaining).cast(BigInteger).label("amount"),
        )
        .join_from(wanted, locked, locked.c.user_id == wanted.c.uid)
        .where(or_(fits, and_(wanted.c.calls == 1, wanted.c.least <= locked.c.remaining)))
        .cte("decided")
    )
    held = (
        update(BALANCES)
        .where(BALANCES.c.user_id == decided.c.uid, decided.c.amount <= REMAINING)
        .values(reserved=BALANCES.c.reserved + decided.c.amount, updated_at=now)
        # The balance as this hold leaves it, for the caller to tell the member.
        .returning(
            BALANCES.c.user_id,
            decided.c.amount,
            REMAINING.label("remaining"),
            GIVEN.label("given"),
            BALANCES.c.period_end,
        )
        .cte("held")
    )
    refused = (
        select(locked.c.user_id, locked.c.remaining, locked.c.reserved)
        .join_from(wanted, locked, locked.c.user_id == wanted.c.uid)
        .where(locked.c.remaining < wanted.c.least)
        .cte("refused")
    )
    source = select(
        calls.c.org,
        calls.c.uid,
        # A user's total held in full covers each call's amount; a lone call shrunk
        # to what remained gets all of it.
        func.least(calls.c.amount, held.c.amount),
        literal(ReservationStatus.HELD.value),
        now,
        bindparam("expires", type_=UTCDateTime()),
    ).join_from(calls, held, held.c.user_id == calls.c.uid)
    columns = ["organization_id", "user_id", "amount", "status", "created_at", "expires_at"]
    inserted = (
        insert(RESERVATIONS)
        .from_select(columns, source)
        .returning(RESERVATIONS.c.id, RESERVATIONS.c.user_id, RESERVATIONS.c.amount)
        .cte("inserted")
    )
    nothing = null().cast(BigInteger)
    no_time = null().cast(UTCDateTime())
    return union_all(
        select(
            inserted.c.id,
            inserted.c.user_id,
            inserted.c.amount,
            held.c.remaining,
            nothing,
            held.c.given,
            held.c.period_end,
        ).join_from(inserted, held, held.c.user_id == inserted.c.user_id),
        select(
            nothing,
            refused.c.user_id,
            nothing,
            refused.c.remaining,
            refused.c.reserved,
            nothing,
            no_time,
        ),
    )


class OneStatementHolds:
    """:func:`hold_in_one_round_trip` as a strategy; it never gives up as a whole."""

    def __init__(self, database: Database, *, ttl_seconds: int) -> None:
        self.database = database
        self.ttl_seconds = ttl_seconds

    async def hold(self, requests: Sequence[HoldRequest]) -> list[QuickResult]:
        return await hold_in_one_round_trip(self.database, requests, ttl_seconds=self.ttl_seconds)


async def hold_in_one_round_trip(
    database: Database, requests: Sequence[HoldRequest], *, ttl_seconds: int
) -> list[QuickResult]:
    """Each call's hold or refusal, or FALLBACK where it could not be decided at once
    (see :func:`_hold_in_one_statement`).

    One statement outside any transaction block, so the database is asked once
    (the UPDATE and the INSERT it feeds commit together, as one statement does).
    """
    now = utcnow()
    calls = sorted(
        (r.organization_id, r.user_id, r.amount, r.least) for r in requests if holdable(r)
    )
    params = {
        **rows_bound("postgresql", "calls", CALLS, calls),
        "now": now,
        "expires": now + timedelta(seconds=ttl_seconds),
    }
    async with database.write_engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        rows = (await connection.execute(_hold_in_one_statement(), params)).all()
    held: dict[int, list[Hold]] = defaultdict(list)
    refused: dict[int, tuple[int, int]] = {}
    for reservation_id, user_id, amount, remaining, reserved, given, resets_at in rows:
        if reservation_id is None:
            refused[user_id] = (remaining, reserved)
        else:
            held[user_id].append(Hold(reservation_id, amount, remaining, given, resets_at))
    results: list[QuickResult] = []
    for request in requests:
        holds = held.get(request.user_id)
        if holds and holdable(request):
            # A user's calls of the same amount are interchangeable: any of their holds
            # will do. A hold of another amount is a lone call's, shrunk.
            same = next((n for n, h in enumerate(holds) if h.amount == request.amount), 0)
            results.append(holds.pop(same))
        elif request.user_id in refused and holdable(request):
            remaining, reserved = refused[request.user_id]
            results.append(insufficient(remaining=remaining, needed=request.least, held=reserved))
        else:
            results.append(FALLBACK)
    return results
