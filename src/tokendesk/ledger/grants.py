"""Approved token requests credited to their requesters, set-based."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeAlias

from sqlalchemy import BigInteger, ColumnElement, Row, String, cast, insert, literal, select
from sqlalchemy import update as sql_update
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.db import UTCDateTime, dialect_of, in_list
from tokendesk.ledger.balances import SNAPSHOT_COLUMNS
from tokendesk.ledger.models import Balance, EntryKind, LedgerEntry
from tokendesk.token_requests.models import TokenRequest

AnyRow: TypeAlias = Row[*tuple[Any, ...]]


async def grant_approved(
    session: AsyncSession,
    *,
    request_ids: Sequence[int],
    actor_id: int,
    note: str | None,
    now: datetime,
) -> list[AnyRow]:
    """Credit each approved request's amount into its requester's current period:
    the cached balances and one GRANT entry per request; the balances as updated
    (rows of ``SNAPSHOT_COLUMNS``).

    One UPDATE ... FROM and one INSERT ... SELECT, whatever the number of requests;
    a user has at most one pending request, so each balance row matches at most one.
    The caller has locked the balances in user order and rolled ended periods over.
    """
    # The table, not the mapped class: the ORM's bulk-update bookkeeping costs
    # more than the statement itself for thousands of returned rows.
    stmt = (
        sql_update(Balance.metadata.tables["balances"])
        .where(
            Balance.user_id == TokenRequest.user_id,
            in_list(dialect_of(session), TokenRequest.id, values=request_ids),
        )
        .values(granted=Balance.granted + TokenRequest.approved_amount, updated_at=now)
        .returning(*SNAPSHOT_COLUMNS)
        .execution_options(synchronize_session=False)
    )
    balances = list((await session.execute(stmt)).all())
    await _insert_grant_entries(
        session, request_ids=request_ids, actor_id=actor_id, note=note, now=now
    )
    return balances


async def _insert_grant_entries(
    session: AsyncSession,
    *,
    request_ids: Sequence[int],
    actor_id: int,
    note: str | None,
    now: datetime,
) -> None:
    """One GRANT entry per approved request, straight from the rows in the database."""
    reason: ColumnElement[str] = (
        literal(note, String())
        if note
        else literal("token request ", String())
        + cast(TokenRequest.id, String())
        + literal(" approved", String())
    )
    entry: dict[str, Any] = {
        "organization_id": Balance.organization_id,
        "user_id": TokenRequest.user_id,
        "period_start": Balance.period_start,
        "kind": literal(EntryKind.GRANT.value, String()),
        "amount": TokenRequest.approved_amount,
        "actor_id": literal(actor_id, BigInteger()),
        "reason": reason,
        "token_request_id": TokenRequest.id,
        "created_at": literal(now, UTCDateTime()),
    }
    source = (
        select(*entry.values())
        .select_from(TokenRequest)
        .join(Balance, Balance.user_id == TokenRequest.user_id)
        .where(in_list(dialect_of(session), TokenRequest.id, values=request_ids))
    )
    await session.execute(insert(LedgerEntry).from_select(list(entry), source))
