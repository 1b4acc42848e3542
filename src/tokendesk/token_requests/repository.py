"""All SQL for token requests: scoped reads, conditional transitions, set-based grants."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Row,
    Select,
    String,
    and_,
    case,
    cast,
    func,
    insert,
    literal,
    or_,
    select,
)
from sqlalchemy import update as sql_update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from tokendesk.accounts.models import Team, User
from tokendesk.audit.models import AuditEntry
from tokendesk.db import UTCDateTime, dialect_of, in_list
from tokendesk.ledger import service as ledger
from tokendesk.ledger.models import Balance
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
    (see :func:`transition`), which then stays with the request as history.
    """
    return case(
        (TokenRequest.status == RequestStatus.PENDING.value, Requester.team_id),
        else_=TokenRequest.team_id,
    )


def _requester_team() -> ColumnElement[int | None]:
    """The requester's current team, for statements without the ``Requester`` join."""
    return select(User.team_id).where(User.id == TokenRequest.user_id).scalar_subquery()


def scope_clause(scope: Scope) -> ColumnElement[bool]:
    """Needs ``Requester`` joined (every read here joins it)."""
    in_org = TokenRequest.organization_id == scope.organization_id
    if scope.everything:
        return in_org
    visible = TokenRequest.user_id == scope.user_id
    if scope.team_ids:
        visible = or_(visible, request_team().in_(sorted(scope.team_ids)))
    return and_(in_org, visible)


def _current_balance(*, now: datetime, org_default: int) -> ColumnElement[int]:
    # A balance whose period has ended has not been rolled over yet; show what
    # the rollover will leave (the fresh allocation minus open holds), not stale numbers.
    return case(
        (Balance.user_id.is_(None), 0),
        (Balance.period_end > now, ledger.REMAINING),
        else_=ledger.allocation_expression(org_default) - Balance.reserved,
    )


def _items(*, now: datetime, org_default: int) -> Select[*tuple[Any, ...]]:
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
            Requester.name.label("user_name"),
            Requester.email.label("user_email"),
            RequestTeam.name.label("team_name"),
            Decider.name.label("decider_name"),
            _current_balance(now=now, org_default=org_default).label("current_balance"),
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
        clauses.append(request_team() == team_id)
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
    org_default: int,
) -> Sequence[AnyRow]:
    query = (
        _items(now=now, org_default=org_default)
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
    session: AsyncSession, *, scope: Scope, request_id: int, now: datetime, org_default: int
) -> AnyRow | None:
    query = _items(now=now, org_default=org_default).where(
        TokenRequest.id == request_id, scope_clause(scope)
    )
    return (await session.execute(query)).first()


async def items_by_ids(
    session: AsyncSession,
    *,
    scope: Scope,
    ids: Sequence[int],
    now: datetime,
    org_default: int,
) -> list[AnyRow]:
    """In-scope requests among ``ids``; ids the caller may not see are simply absent.

    Run as plain Core: for thousands of rows the ORM's per-row work costs more
    than the query.
    """
    query = _items(now=now, org_default=org_default).where(
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


async def insert_request(
    session: AsyncSession,
    *,
    organization_id: int,
    user_id: int,
    team_id: int | None,
    amount: int,
    reason: str | None,
    balance_at_request: int,
    now: datetime,
) -> int:
    """Insert a pending request inside a savepoint, so a unique-index violation
    (a concurrent second pending request) leaves the transaction usable."""
    request = TokenRequest(
        organization_id=organization_id,
        user_id=user_id,
        team_id=team_id,
        amount=amount,
        reason=reason,
        status=RequestStatus.PENDING.value,
        balance_at_request=balance_at_request,
        created_at=now,
    )
    async with session.begin_nested():
        session.add(request)
        await session.flush()
    return request.id


async def transition(
    session: AsyncSession,
    *,
    ids: Sequence[int],
    to: RequestStatus,
    now: datetime,
    decided_by_id: int | None = None,
    note: str | None = None,
    approved_amount: int | None = None,
    requester_id: int | None = None,
    within_teams: frozenset[int] | None = None,
) -> list[AnyRow]:
    """Move pending requests to ``to``; only rows still pending change.

    The ``status = 'pending'`` condition is what makes concurrent deciders
    safe: of two transactions racing on one row, the second updates nothing.
    ``within_teams`` (a team owner's decision) changes only requests whose
    requester is in one of those teams when the update runs, so a requester
    moved away since the caller's read is not decided by their old team.
    A decision records the requester's team at that moment.
    An approval without ``approved_amount`` grants the requested amount.
    Returns ``(id, user_id, team_id, approved_amount)`` for each changed row.
    """
    values: dict[str, Any] = {"status": to.value, "team_id": _requester_team()}
    if to is not RequestStatus.CANCELLED:
        values.update(decided_at=now, decided_by_id=decided_by_id, decision_note=note)
    if to is RequestStatus.APPROVED:
        values["approved_amount"] = (
            TokenRequest.amount if approved_amount is None else approved_amount
        )
    # The table, not the mapped class: the ORM's bulk-update bookkeeping costs
    # more than the statement itself for thousands of returned rows.
    stmt = (
        sql_update(TokenRequest.metadata.tables["token_requests"])
        .where(among(session, TokenRequest.id, ids), TokenRequest.status == RequestStatus.PENDING)
        .values(values)
        .returning(
            TokenRequest.id,
            TokenRequest.user_id,
            TokenRequest.team_id,
            TokenRequest.approved_amount,
        )
        .execution_options(synchronize_session=False)
    )
    if requester_id is not None:
        stmt = stmt.where(TokenRequest.user_id == requester_id)
    if within_teams is not None:
        stmt = stmt.where(_requester_team().in_(sorted(within_teams)))
    return list((await session.execute(stmt)).all())


def _json_object(dialect: str, pairs: dict[str, Any]) -> ColumnElement[Any]:
    build = func.json_build_object if dialect == "postgresql" else func.json_object
    args: list[Any] = []
    for key, value in pairs.items():
        args.extend((literal(key, String()), value))
    return build(*args)


async def insert_decision_audit(
    session: AsyncSession,
    *,
    request_ids: Sequence[int],
    organization_id: int,
    actor_id: int,
    status: RequestStatus,
    note: str | None,
    now: datetime,
) -> None:
    """One audit row per bulk decision, built in the database (INSERT ... SELECT)
    with the same details a single decision records, plus ``bulk: true``."""
    dialect = dialect_of(session)
    details: dict[str, Any] = {"note": literal(note, String())}
    if status is RequestStatus.APPROVED:
        details["amount"] = TokenRequest.approved_amount
        details["requested"] = TokenRequest.amount
    details["bulk"] = literal(True) if dialect == "postgresql" else func.json("true")
    columns = [
        "organization_id",
        "actor_id",
        "action",
        "target_type",
        "target_id",
        "details",
        "created_at",
    ]
    source = select(
        literal(organization_id, BigInteger()),
        literal(actor_id, BigInteger()),
        literal(f"token_request.{status.value}", String()),
        literal("token_request", String()),
        cast(TokenRequest.id, String()),
        _json_object(dialect, details),
        literal(now, UTCDateTime()),
    ).where(among(session, TokenRequest.id, request_ids))
    await session.execute(insert(AuditEntry).from_select(columns, source))
