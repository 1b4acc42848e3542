"""Row locks taken in one order, so two transactions changing several balances never deadlock."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.db import dialect_of, in_list, listed, run_core
from tokendesk.ledger.models import (
    BALANCES,
    Balance,
)


@cache
def _lock_in_user_order(dialect: str) -> Any:
    return (
        select(BALANCES.c.user_id)
        .where(in_list(dialect, BALANCES.c.user_id))
        .order_by(BALANCES.c.user_id)
        .with_for_update()
    )


async def lock_in_user_order(session: AsyncSession, users: Iterable[int] | Select[Any]) -> None:
    """PostgreSQL: lock the balances of ``users`` (ids, or a query of user ids) in user
    order, as every transaction that changes several balances does before it
    changes any.

    A set-based UPDATE takes its rows in whatever order its plan visits them, and
    one-by-one updates in the order of their callers: two transactions could then
    each hold a row the other waits for. On SQLite one writer at a time has the
    whole database, so there is nothing to order (and nothing runs).
    """
    dialect = dialect_of(session)
    if dialect != "postgresql":
        return
    if isinstance(users, Select):
        await session.execute(
            select(Balance.user_id)
            .where(Balance.user_id.in_(users))
            .order_by(Balance.user_id)
            .with_for_update()
        )
        return
    ids = set(users)
    if ids:
        await run_core(session, _lock_in_user_order(dialect), {"ids": listed(dialect, ids)})


def users_of(organization_id: int) -> Select[Any]:
    """The organization's users, as a query (for :func:`lock_in_user_order`)."""
    return select(Balance.user_id).where(Balance.organization_id == organization_id)
