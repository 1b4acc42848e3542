"""The SQL of the request statistics: token requests made in a range, by creation time.

A covering index on (organization, created_at, ...) serves every query here, so
a range of thousands of requests never visits the table.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    Select,
    case,
    cast,
    func,
    literal_column,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.analytics.repository import Where, chunks, rows_of
from tokendesk.db import dialect_of
from tokendesk.metering.models import NO_TEAM
from tokendesk.token_requests.models import DecisionKind, RequestStatus, TokenRequest

DECIDED = (RequestStatus.APPROVED.value, RequestStatus.REJECTED.value)
# Decisions a person took: a rule's are taken as the request is made, and would pull
# the median of how long people take towards zero. Decisions older than the kinds
# record none, and were all people's.
BY_PEOPLE = or_(
    TokenRequest.decision_kind.is_(None), TokenRequest.decision_kind != DecisionKind.RULE.value
)


def _requests_in(
    where: Where, start: datetime, end: datetime, *, team_column: Any = None
) -> list[ColumnElement[bool]]:
    clauses = [
        TokenRequest.organization_id == where.organization_id,
        TokenRequest.created_at >= start,
        TokenRequest.created_at < end,
    ]
    if where.team_ids is not None:
        team = func.coalesce(TokenRequest.team_id, NO_TEAM)
        clauses.append(team.in_(sorted(where.team_ids)))
    return clauses


_GRANTED = func.coalesce(
    func.sum(
        case((TokenRequest.status == RequestStatus.APPROVED.value, TokenRequest.approved_amount))
    ),
    0,
)


async def request_counts(
    session: AsyncSession, *, where: Where, start: datetime, end: datetime
) -> list[tuple[str, int, int, int]]:
    """(status, count, tokens requested, tokens granted) of requests made in [start, end)."""
    rows = await rows_of(
        session,
        select(TokenRequest.status, func.count(), func.sum(TokenRequest.amount), _GRANTED)
        .where(*_requests_in(where, start, end))
        .group_by(TokenRequest.status),
    )
    return [(status, int(n), int(asked or 0), int(granted)) for status, n, asked, granted in rows]


async def decision_kinds(
    session: AsyncSession, *, where: Where, start: datetime, end: datetime
) -> list[tuple[str | None, int | None, str | None, int, int]]:
    """(kind, rule id, rule name, count, tokens granted) of the decided requests made
    in [start, end), by how they were decided and, for rules, by which rule. Reads
    the table, not the covering index: only decided rows, a fraction of the range."""
    rows = await rows_of(
        session,
        select(
            TokenRequest.decision_kind,
            TokenRequest.decided_by_rule_id,
            func.max(TokenRequest.decided_by_rule_name),
            func.count(),
            _GRANTED,
        )
        .where(*_requests_in(where, start, end), TokenRequest.status.in_(DECIDED))
        .group_by(TokenRequest.decision_kind, TokenRequest.decided_by_rule_id),
    )
    return [(kind, rule, name, int(n), int(granted)) for kind, rule, name, n, granted in rows]


async def median_decision_seconds(
    session: AsyncSession, *, where: Where, start: datetime, end: datetime, decided: int
) -> float | None:
    """Median time from request to decision of the requests made in [start, end) and
    decided by a person (``decided`` of them)."""
    if decided == 0:
        return None
    clauses = [*_requests_in(where, start, end), TokenRequest.status.in_(DECIDED), BY_PEOPLE]
    if dialect_of(session) == "postgresql":
        seconds: Any = func.extract("epoch", TokenRequest.decided_at - TokenRequest.created_at)
        median = func.percentile_cont(0.5).within_group(seconds)
        value = await session.scalar(select(median).where(*clauses))
        return None if value is None else float(value)
    # SQLite has no percentile: the middle one or two values of the sorted durations.
    seconds = cast(
        (func.julianday(TokenRequest.decided_at) - func.julianday(TokenRequest.created_at))
        * 86400.0,
        Float,
    ).label("seconds")
    middle = await session.scalars(
        # Ordered by the label: the dates are parsed once per row, not twice.
        select(seconds)
        .where(*clauses)
        .order_by(literal_column("seconds"))
        .limit(2 - decided % 2)
        .offset((decided - 1) // 2)
    )
    values = list(middle)
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class RequestTally:
    requests: int
    requested: int
    granted: int
    approved: int
    rejected: int
    pending: int


def _tally_columns() -> list[Any]:
    def count_of(status: RequestStatus) -> Any:
        return func.coalesce(func.sum(case((TokenRequest.status == status.value, 1), else_=0)), 0)

    return [
        func.count(),
        func.coalesce(func.sum(TokenRequest.amount), 0),
        _GRANTED,
        count_of(RequestStatus.APPROVED),
        count_of(RequestStatus.REJECTED),
        count_of(RequestStatus.PENDING),
    ]


async def requests_by_user(
    session: AsyncSession,
    *,
    where: Where,
    start: datetime,
    end: datetime,
    user_ids: Collection[int] | None = None,
    limit: int | None = None,
) -> dict[int, RequestTally]:
    """Per requester, requests made in [start, end): these users, or the top ``limit``."""
    base: Select[Any] = select(TokenRequest.user_id, *_tally_columns()).where(
        *_requests_in(where, start, end)
    )
    out: dict[int, RequestTally] = {}
    if user_ids is not None:
        for chunk in chunks(sorted(user_ids)):
            rows = await rows_of(
                session, base.where(TokenRequest.user_id.in_(chunk)).group_by(TokenRequest.user_id)
            )
            out.update({row[0]: RequestTally(*map(int, row[1:])) for row in rows})
        return out
    # Rank on two cheap sums first; tally only the requesters shown.
    ranking = (
        select(TokenRequest.user_id)
        .where(*_requests_in(where, start, end))
        .group_by(TokenRequest.user_id)
        .order_by(func.count().desc(), func.sum(TokenRequest.amount).desc(), TokenRequest.user_id)
    )
    if limit is not None:
        ranking = ranking.limit(limit)
    ranked = list(await session.scalars(ranking))
    tallies = await requests_by_user(session, where=where, start=start, end=end, user_ids=ranked)
    return {user_id: tallies[user_id] for user_id in ranked}


async def requests_by_team(
    session: AsyncSession, *, where: Where, start: datetime, end: datetime
) -> dict[int, RequestTally]:
    """Per team of the requester when asking (0: none), requests made in [start, end)."""
    team = func.coalesce(TokenRequest.team_id, NO_TEAM)
    rows = await rows_of(
        session,
        select(team, *_tally_columns()).where(*_requests_in(where, start, end)).group_by(team),
    )
    return {row[0]: RequestTally(*map(int, row[1:])) for row in rows}
