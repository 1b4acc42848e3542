"""SQL that changes token requests: the insert of a pending request, the conditional
transitions, and a bulk decision's audit rows built in the database."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, String, cast, func, insert, literal, select
from sqlalchemy import update as sql_update
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.models import User
from tokendesk.audit.models import AuditEntry
from tokendesk.db import UTCDateTime, dialect_of
from tokendesk.token_requests.models import DecisionKind, RequestStatus, TokenRequest
from tokendesk.token_requests.repository import AnyRow, among


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


async def insert_granted(
    session: AsyncSession,
    *,
    organization_id: int,
    user_id: int,
    team_id: int | None,
    amount: int,
    reason: str,
    balance_at_request: int,
    rule: tuple[int, str],
    note: str,
    now: datetime,
) -> int:
    """Insert a request its rule approved as it was made (the auto top-up): written
    approved, so it never meets the one-pending index and a pending request of the
    member's own stays as it was."""
    request = TokenRequest(
        organization_id=organization_id,
        user_id=user_id,
        team_id=team_id,
        amount=amount,
        approved_amount=amount,
        reason=reason,
        status=RequestStatus.APPROVED.value,
        balance_at_request=balance_at_request,
        created_at=now,
        decided_at=now,
        decision_note=note,
        decision_kind=DecisionKind.RULE.value,
        decided_by_rule_id=rule[0],
        decided_by_rule_name=rule[1],
    )
    session.add(request)
    await session.flush()
    return request.id


def _requester_team() -> ColumnElement[int | None]:
    """The requester's current team, for statements without the ``Requester`` join."""
    return select(User.team_id).where(User.id == TokenRequest.user_id).scalar_subquery()


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
    kind: DecisionKind | None = None,
    rule: tuple[int, str | None] | None = None,
) -> list[AnyRow]:
    """Move pending requests to ``to``; only rows still pending change.

    The ``status = 'pending'`` condition is what makes concurrent deciders
    safe: of two transactions racing on one row, the second updates nothing.
    ``within_teams`` (a team owner's decision) changes only requests whose
    requester is in one of those teams when the update runs, so a requester
    moved away since the caller's read is not decided by their old team.
    A decision records the requester's team at that moment, its ``kind`` and, for
    a rule's, the rule's ``(id, name)``.
    An approval without ``approved_amount`` grants the requested amount.
    Returns ``(id, user_id, team_id, approved_amount)`` for each changed row.
    """
    values: dict[str, Any] = {"status": to.value, "team_id": _requester_team()}
    if to is not RequestStatus.CANCELLED:
        values.update(decided_at=now, decided_by_id=decided_by_id, decision_note=note)
        values["decision_kind"] = None if kind is None else kind.value
        if rule is not None:
            values.update(decided_by_rule_id=rule[0], decided_by_rule_name=rule[1])
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
