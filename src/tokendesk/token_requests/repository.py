"""SQL for reading token requests: the caller's scope, the queue's filters and pages.

What changes them (the insert, the conditional transitions, a bulk decision's audit
rows) is in ``transitions_repository``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

from sqlalchemy import (
    ColumnElement,
    Row,
    Select,
    and_,
    case,
    func,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from tokendesk.accounts.models import Organization, Team, User
from tokendesk.db import dialect_of, in_list
from tokendesk.ledger.models import REMAINING, Balance, remaining_of
from tokendesk.ledger.rollover import rolled_over
from tokendesk.token_requests.models import RequestStatus, TokenRequest

AnyRow: TypeAlias = Row[*tuple[Any, ...]]

# Keeps IN lists of plain values (ledger rollovers) inside the drivers' parameter limits.
CHUNK = 5_000

# Aliases, so the allocation subquery below correlates only on the balance row.
Requester = aliased(User, name="requester")
RequestTeam = aliased(Team, name="request_team")
Decider = aliased(User, name="decider")


@dataclass(frozen=True)
class Scope:
    """Which requests a caller may see: one organization, then everything in it,
    or only the caller's own requests plus those of the listed teams."""

    organization_id: int
    everything: bool
    user_id: int
    team_ids: frozenset[int] = frozenset()


def chunked(values: Sequence[Any], size: int | None = None) -> Iterator[Sequence[Any]]:
    size = size or CHUNK
    for start in range(0, len(values), size):
        yield values[start : start + size]


def among(session: AsyncSession, column: Any, ids: Sequence[int]) -> ColumnElement[bool]:
    """``column IN ids`` with all ids in one bound parameter (see ``db.in_list``), so
    100,000 ids are still one short statement."""
    return in_list(dialect_of(session), column, values=ids)


def request_team() -> ColumnElement[int | None]:
    """The request's team; needs ``Requester`` joined.

    A pending request belongs to its requester's team now, wherever they were
    when they asked: a move needs no update of their requests, and no path that
    moves people can forget one. A decision writes the team it was decided in
    (see ``transitions_repository.transition``), which then stays with the request
    as history.
    """
    return case(
        (TokenRequest.status == RequestStatus.PENDING.value, Requester.team_id),
        else_=TokenRequest.team_id,
    )


def request_team_in(team_ids: Sequence[int]) -> ColumnElement[bool]:
    """``request_team() IN team_ids``, one branch per kind of request: a decided
    request's own ``team_id`` is then compared as a column, which the index on
    (team_id, status) serves, where the CASE expression would hide it from the index.
    Needs ``Requester`` joined."""
    pending = TokenRequest.status == RequestStatus.PENDING.value
    return or_(
        and_(pending, Requester.team_id.in_(team_ids)),
        and_(~pending, TokenRequest.team_id.in_(team_ids)),
    )


def scope_clause(scope: Scope) -> ColumnElement[bool]:
    """Needs ``Requester`` joined (every read here joins it)."""
    in_org = TokenRequest.organization_id == scope.organization_id
    if scope.everything:
        return in_org
    visible = TokenRequest.user_id == scope.user_id
    if scope.team_ids:
        visible = or_(visible, request_team_in(sorted(scope.team_ids)))
    return and_(in_org, visible)


def _current_balance(*, now: datetime, org: Organization) -> ColumnElement[int]:
    # A balance whose period has ended has not been rolled over yet; show what the
    # rollover will leave (its figures as ``rolled_over`` sets them, holds carried over),
    # as /api/v1/me does, not stale numbers.
    new = rolled_over(org, now=now)
    return case(
        (Balance.user_id.is_(None), 0),
        (Balance.period_end > now, REMAINING),
        else_=remaining_of(
            new["allocation"], new["granted"], new["adjusted"], new["used"], Balance.reserved
        ),
    )


def _items(*, now: datetime, org: Organization) -> Select[*tuple[Any, ...]]:
    return (
        select(
            TokenRequest.id,
            TokenRequest.organization_id,
            TokenRequest.user_id,
            request_team().label("team_id"),
            TokenRequest.status,
            TokenRequest.amount,
            TokenRequest.approved_amount,
            TokenRequest.reason,
            TokenRequest.balance_at_request,
            TokenRequest.created_at,
            TokenRequest.decided_at,
            TokenRequest.decided_by_id,
            TokenRequest.decision_note,
            TokenRequest.decision_kind,
            TokenRequest.decided_by_rule_id,
            TokenRequest.decided_by_rule_name,
            Requester.name.label("user_name"),
            Requester.email.label("user_email"),
            RequestTeam.name.label("team_name"),
            Decider.name.label("decider_name"),
            _current_balance(now=now, org=org).label("current_balance"),
            # Whether the requester's period has ended: a bulk grant rolls over only those.
            (Balance.period_end <= now).label("period_ended"),
        )
        .join(Requester, Requester.id == TokenRequest.user_id)
        .outerjoin(RequestTeam, RequestTeam.id == request_team())
        .outerjoin(Decider, Decider.id == TokenRequest.decided_by_id)
        .outerjoin(Balance, Balance.user_id == TokenRequest.user_id)
    )


def _filters(
    scope: Scope, *, status: str | None, team_id: int | None, q: str | None
) -> list[ColumnElement[bool]]:
    clauses = [scope_clause(scope)]
    if status is not None:
        clauses.append(TokenRequest.status == status)
    if team_id is not None:
        clauses.append(request_team_in([team_id]))
    if q:
        needle = q.lower()
        clauses.append(
            or_(
                func.lower(Requester.name).contains(needle, autoescape=True),
                func.lower(Requester.email).contains(needle, autoescape=True),
            )
        )
    return clauses


ORDERINGS: dict[str, tuple[ColumnElement[Any], ...]] = {
    "created_at": (TokenRequest.created_at.asc(), TokenRequest.id.asc()),
    "-created_at": (TokenRequest.created_at.desc(), TokenRequest.id.desc()),
    "amount": (TokenRequest.amount.asc(), TokenRequest.id.asc()),
    "-amount": (TokenRequest.amount.desc(), TokenRequest.id.desc()),
}


async def list_items(
    session: AsyncSession,
    *,
    scope: Scope,
    status: str | None,
    team_id: int | None,
    q: str | None,
    sort: str,
    limit: int,
    offset: int,
    now: datetime,
    org: Organization,
) -> Sequence[AnyRow]:
    query = (
        _items(now=now, org=org)
        .where(*_filters(scope, status=status, team_id=team_id, q=q))
        .order_by(*ORDERINGS[sort])
        .limit(limit)
        .offset(offset)
    )
    return (await session.execute(query)).all()


async def count_items(
    session: AsyncSession,
    *,
    scope: Scope,
    status: str | None,
    team_id: int | None,
    q: str | None,
) -> int:
    query = (
        select(func.count())
        .select_from(TokenRequest)
        .join(Requester, Requester.id == TokenRequest.user_id)
        .where(*_filters(scope, status=status, team_id=team_id, q=q))
    )
    return int(await session.scalar(query) or 0)


async def status_counts(
    session: AsyncSession, *, scope: Scope, team_id: int | None, q: str | None
) -> dict[str, int]:
    query = (
        select(TokenRequest.status, func.count())
        .select_from(TokenRequest)
        .join(Requester, Requester.id == TokenRequest.user_id)
        .where(*_filters(scope, status=None, team_id=team_id, q=q))
        .group_by(TokenRequest.status)
    )
    return {status: int(count) for status, count in (await session.execute(query)).all()}


async def get_item(
    session: AsyncSession, *, scope: Scope, request_id: int, now: datetime, org: Organization
) -> AnyRow | None:
    query = _items(now=now, org=org).where(TokenRequest.id == request_id, scope_clause(scope))
    return (await session.execute(query)).first()


async def items_by_ids(
    session: AsyncSession,
    *,
    scope: Scope,
    ids: Sequence[int],
    now: datetime,
    org: Organization,
) -> list[AnyRow]:
    """In-scope requests among ``ids``; ids the caller may not see are simply absent.

    Run as plain Core: for thousands of rows the ORM's per-row work costs more
    than the query.
    """
    query = _items(now=now, org=org).where(
        among(session, TokenRequest.id, ids), scope_clause(scope)
    )
    connection = await session.connection()
    return list((await connection.execute(query)).all())


async def pending_of_user(session: AsyncSession, *, user_id: int) -> AnyRow | None:
    query = select(TokenRequest.id, TokenRequest.amount).where(
        TokenRequest.user_id == user_id, TokenRequest.status == RequestStatus.PENDING
    )
    return (await session.execute(query)).first()


async def statuses(session: AsyncSession, *, ids: Sequence[int]) -> dict[int, str]:
    query = select(TokenRequest.id, TokenRequest.status).where(among(session, TokenRequest.id, ids))
    return {row.id: row.status for row in (await session.execute(query)).all()}
