"""The daily digest: each approver hears, once a day, of the requests still waiting
for them. Off by default (``notification_settings.digest_enabled``); sent at
``digest_hour`` o'clock in the organization's time zone by the scheduler, which every
instance runs: ``notification_digests`` is keyed by approver and local day, and only
the rows that insert queue an email, so several instances reaching the hour together
send one. An approver with nothing pending gets nothing; who is an approver is
``outbox.approvers``'s rule, applied to each pending request."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.models import Organization, User
from tokendesk.db import dialect_of, run_core
from tokendesk.ledger.periods import zone
from tokendesk.metering.repository import dialect_insert
from tokendesk.notifications.alerts import insert_notifications, opted_out, outbox_row
from tokendesk.notifications.models import DigestSent, Kind, OrgNotificationSettings
from tokendesk.notifications.outbox import approvers
from tokendesk.token_requests.models import RequestStatus, TokenRequest

DIGESTS = cast(Table, DigestSent.__table__)
# The requests an email lists, oldest first; the count and the total cover them all.
LISTED = 20


@dataclass(frozen=True)
class _Pending:
    id: int
    user_id: int
    team_id: int | None
    amount: int
    requester: str
    created_at: datetime


async def queue_due(session: AsyncSession, *, now: datetime) -> int:
    """Queue today's digests of every organization whose digest hour it is now, in its
    time zone; returns how many emails were queued (none twice for one approver and day)."""
    due = await session.execute(
        select(Organization.id, Organization.timezone, OrgNotificationSettings.digest_hour)
        .join(OrgNotificationSettings, OrgNotificationSettings.organization_id == Organization.id)
        .where(
            OrgNotificationSettings.digest_enabled.is_(True),
            OrgNotificationSettings.email_enabled.is_(True),
        )
        .order_by(Organization.id)
    )
    queued = 0
    for organization_id, timezone, hour in due.all():
        local = now.astimezone(zone(timezone or "UTC"))
        if local.hour == hour:
            queued += await _queue_organization(
                session, organization_id=organization_id, day=local.date(), now=now
            )
    return queued


async def _queue_organization(
    session: AsyncSession, *, organization_id: int, day: date, now: datetime
) -> int:
    rows = await session.execute(
        select(
            TokenRequest.id,
            TokenRequest.user_id,
            TokenRequest.team_id,
            TokenRequest.amount,
            User.name,
            TokenRequest.created_at,
        )
        .join(User, User.id == TokenRequest.user_id)
        .where(
            TokenRequest.organization_id == organization_id,
            TokenRequest.status == RequestStatus.PENDING.value,
        )
        .order_by(TokenRequest.created_at, TokenRequest.id)
    )
    pending = [_Pending(*row) for row in rows.all()]
    if not pending:
        return 0
    waiting: dict[int, list[_Pending]] = defaultdict(list)
    # Per team, and per requester where the requester is among the team's approvers (the
    # rule then passes them over, and may fall back to the admins).
    known: dict[tuple[int | None, int], list[int]] = {}
    for request in pending:
        base = known.get((request.team_id, 0))
        if base is None:
            base = known[(request.team_id, 0)] = await approvers(
                session, organization_id=organization_id, team_id=request.team_id, requester_id=0
            )
        people = base
        if request.user_id in base:
            key = (request.team_id, request.user_id)
            if key not in known:
                known[key] = await approvers(
                    session,
                    organization_id=organization_id,
                    team_id=request.team_id,
                    requester_id=request.user_id,
                )
            people = known[key]
        for person in people:
            waiting[person].append(request)
    if not waiting:
        return 0
    fresh = await _claim(
        session, organization_id=organization_id, people=sorted(waiting), day=day, now=now
    )
    refused = await opted_out(session, sorted(fresh), Kind.DIGEST)
    queued = [
        outbox_row(
            organization_id=organization_id,
            kind=Kind.DIGEST,
            user_id=person,
            details=_details(waiting[person], day),
            now=now,
        )
        for person in sorted(fresh - refused)
    ]
    await insert_notifications(session, queued)
    return len(queued)


async def _claim(
    session: AsyncSession, *, organization_id: int, people: list[int], day: date, now: datetime
) -> set[int]:
    """Record today's digest of each of ``people``; those recorded before are skipped."""
    statement = (
        dialect_insert(dialect_of(session))(DIGESTS)
        .on_conflict_do_nothing(index_elements=["user_id", "day"])
        .returning(DIGESTS.c.user_id)
    )
    params = [
        {"user_id": p, "day": day, "organization_id": organization_id, "created_at": now}
        for p in people
    ]
    return {int(user_id) for (user_id,) in await run_core(session, statement, params)}


def _details(requests: list[_Pending], day: date) -> dict[str, Any]:
    return {
        "day": day.isoformat(),
        "count": len(requests),
        "tokens": sum(r.amount for r in requests),
        "requests": [
            {
                "id": r.id,
                "requester": r.requester,
                "amount": r.amount,
                "created_at": r.created_at.isoformat(),
            }
            for r in requests[:LISTED]
        ],
    }
