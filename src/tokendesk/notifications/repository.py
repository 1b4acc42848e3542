"""The worker's SQL: claim due notifications, read what their delivery needs, record
the outcome. Each runs in a short transaction of its own; nothing is held while
a message travels."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import (
    String,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from tokendesk.accounts.models import INTEGRATION_SOURCE, ExternalIdentity, Organization, Team, User
from tokendesk.db import dialect_of, in_list
from tokendesk.notifications.messages import Delivery, RequestFacts
from tokendesk.notifications.models import (
    Attempt,
    Channel,
    DigestSent,
    Notification,
    Status,
    ThresholdAlert,
    Webhook,
)
from tokendesk.token_requests.models import TokenRequest

NOTIFICATIONS = Notification.metadata.tables["notifications"]
# Past the notifications' keeping (30 days), how much older a threshold's period start
# must be before its record goes: two months more, so its period has surely ended.
ALERTS_KEPT = timedelta(days=62)
Recipient = aliased(User, name="recipient")
Requester = aliased(User, name="requester")
Decider = aliased(User, name="decider")


def _due(now: datetime) -> Any:
    return (
        Notification.status == Status.PENDING.value,
        Notification.next_attempt_at <= now,
        or_(Notification.lease_until.is_(None), Notification.lease_until <= now),
    )


async def claim(
    session: AsyncSession, *, now: datetime, lease_until: datetime, limit: int
) -> list[int]:
    """Lease up to ``limit`` due notifications, oldest due first, and count the attempt.

    On PostgreSQL the due rows are picked ``FOR UPDATE SKIP LOCKED``: workers claiming
    at once take disjoint batches instead of queueing on each other's rows. On SQLite a
    write transaction holds the database's one write lock, which does the same. A
    claim commits at once; the lease, not a lock, keeps the row the claimer's while it
    delivers, and outlives a claimer that dies.
    """
    due = (
        select(Notification.id)
        .where(*_due(now))
        .order_by(Notification.next_attempt_at, Notification.id)
        .limit(limit)
    )
    if dialect_of(session) == "postgresql":
        due = due.with_for_update(skip_locked=True)
    stmt = (
        update(NOTIFICATIONS)
        .where(NOTIFICATIONS.c.id.in_(due.scalar_subquery()))
        .values(lease_until=lease_until, attempts=NOTIFICATIONS.c.attempts + 1)
        .returning(NOTIFICATIONS.c.id)
    )
    return sorted((await session.execute(stmt)).scalars())


async def deliveries(session: AsyncSession, ids: Sequence[int]) -> list[Delivery]:
    from_chat_app = exists().where(
        ExternalIdentity.user_id == Requester.id,
        ExternalIdentity.source.startswith(INTEGRATION_SOURCE),
    )
    stmt = (
        select(
            Notification.id,
            Notification.kind,
            Notification.channel,
            Notification.organization_id,
            Organization.name.label("organization_name"),
            Notification.created_at,
            Notification.attempts,
            Notification.details,
            Recipient.id.label("to_user_id"),
            Recipient.email.label("to_email"),
            Recipient.name.label("to_name"),
            Recipient.is_active.label("to_active"),
            Webhook.id.label("webhook_id"),
            Webhook.url,
            Webhook.format,
            Webhook.secret,
            TokenRequest.id.label("request_id"),
            TokenRequest.status.label("request_status"),
            TokenRequest.amount,
            TokenRequest.approved_amount,
            TokenRequest.reason,
            TokenRequest.decision_note,
            TokenRequest.created_at.label("requested_at"),
            Requester.id.label("requester_id"),
            Requester.name.label("requester_name"),
            Requester.email.label("requester_email"),
            from_chat_app.label("from_chat_app"),
            # A rule's decision names the rule, as the queue does.
            func.coalesce(
                Decider.name,
                literal("auto-approved by rule ", String()) + TokenRequest.decided_by_rule_name,
            ).label("decider_name"),
            Team.name.label("team_name"),
        )
        .join(Organization, Organization.id == Notification.organization_id)
        .outerjoin(Recipient, Recipient.id == Notification.user_id)
        .outerjoin(Webhook, Webhook.id == Notification.webhook_id)
        .outerjoin(TokenRequest, TokenRequest.id == Notification.token_request_id)
        .outerjoin(Requester, Requester.id == TokenRequest.user_id)
        .outerjoin(Decider, Decider.id == TokenRequest.decided_by_id)
        .outerjoin(Team, Team.id == TokenRequest.team_id)
        .where(in_list(dialect_of(session), Notification.id, values=ids))
        .order_by(Notification.id)
    )
    found: list[Delivery] = []
    for row in (await session.execute(stmt)).mappings():
        request = None
        if row["request_id"] is not None:
            request = RequestFacts(
                id=row["request_id"],
                status=row["request_status"],
                amount=row["amount"],
                approved_amount=row["approved_amount"],
                reason=row["reason"],
                note=row["decision_note"],
                requester_id=row["requester_id"],
                requester_name=row["requester_name"],
                requester_email=row["requester_email"],
                requester_from_chat_app=bool(row["from_chat_app"]),
                decider_name=row["decider_name"],
                team_name=row["team_name"],
                created_at=row["requested_at"],
            )
        found.append(
            Delivery(
                id=row["id"],
                kind=row["kind"],
                channel=row["channel"],
                organization_id=row["organization_id"],
                organization_name=row["organization_name"],
                created_at=row["created_at"],
                attempts=row["attempts"],
                details=row["details"],
                to_user_id=row["to_user_id"] if row["to_active"] else None,
                to_email=row["to_email"],
                to_name=row["to_name"],
                webhook_id=row["webhook_id"],
                webhook_url=row["url"],
                webhook_format=row["format"],
                webhook_secret=row["secret"],
                request=request,
            )
        )
    return found


async def record(
    session: AsyncSession,
    *,
    now: datetime,
    sent: Sequence[int],
    retries: Sequence[tuple[int, datetime, str]],
    failed: Sequence[tuple[int, str]],
    skipped: Sequence[tuple[int, str]],
) -> None:
    """Write each claimed notification's outcome and its attempt row."""
    dialect = dialect_of(session)
    if sent:
        await session.execute(
            update(NOTIFICATIONS)
            .where(in_list(dialect, NOTIFICATIONS.c.id, values=sent))
            .values(status=Status.SENT.value, sent_at=now, lease_until=None, last_error=None)
        )
    ends = [(i, Status.FAILED.value, e) for i, e in failed]
    ends += [(i, Status.SKIPPED.value, e) for i, e in skipped]
    if ends:
        await session.execute(
            update(NOTIFICATIONS)
            .where(NOTIFICATIONS.c.id == bindparam("b_id"))
            .values(
                status=bindparam("b_status"), lease_until=None, last_error=bindparam("b_error")
            ),
            [{"b_id": i, "b_status": s, "b_error": e} for i, s, e in ends],
        )
    if retries:
        await session.execute(
            update(NOTIFICATIONS)
            .where(NOTIFICATIONS.c.id == bindparam("b_id"))
            .values(
                next_attempt_at=bindparam("b_next"),
                lease_until=None,
                last_error=bindparam("b_error"),
            ),
            [{"b_id": i, "b_next": at, "b_error": e} for i, at, e in retries],
        )
    attempts = [
        {"notification_id": i, "attempted_at": now, "outcome": "sent", "error": None} for i in sent
    ]
    attempts += [
        {"notification_id": i, "attempted_at": now, "outcome": "retry", "error": e}
        for i, _, e in retries
    ]
    attempts += [
        {"notification_id": i, "attempted_at": now, "outcome": s, "error": e} for i, s, e in ends
    ]
    if attempts:
        await session.execute(insert(Attempt), attempts)


async def next_due(session: AsyncSession) -> datetime | None:
    """When the earliest pending notification is due, its lease counted."""
    at = case(
        (
            Notification.lease_until > Notification.next_attempt_at,
            Notification.lease_until,
        ),
        else_=Notification.next_attempt_at,
    )
    value: datetime | None = await session.scalar(
        select(func.min(at)).where(Notification.status == Status.PENDING.value)
    )
    return value


async def prune(session: AsyncSession, *, before: datetime) -> int:
    """Forget notifications delivered (or given up) before ``before``, and the records
    of alerts and digests sent that can no longer stop a repeat: a threshold's period
    began more than two periods ago (a period is a month), a digest's day is past."""
    result = await session.execute(
        delete(NOTIFICATIONS).where(
            NOTIFICATIONS.c.status != Status.PENDING.value, NOTIFICATIONS.c.created_at < before
        )
    )
    await session.execute(
        delete(ThresholdAlert).where(ThresholdAlert.period_start < before - ALERTS_KEPT)
    )
    await session.execute(delete(DigestSent).where(DigestSent.day < before.date()))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def backoff(settings_retry: float, attempts: int) -> timedelta:
    """Seconds before attempt ``attempts + 1``: the first retry's delay, doubled for each
    attempt since, at most an hour."""
    return timedelta(seconds=min(settings_retry * 2 ** max(attempts - 1, 0), 3600.0))


async def outbox_depth(session: AsyncSession) -> Iterable[Metric]:
    """The outbox for ``/metrics``, read at scrape time (a probe of the runtime's):
    notifications waiting to be delivered and those given up, kept for the delivery
    view, each by channel. Every instance reports the same figures: the database's."""
    counted = (
        select(Notification.channel, Notification.status, func.count())
        .where(
            or_(
                Notification.status == Status.PENDING.value,
                Notification.status == Status.FAILED.value,
            )
        )
        .group_by(Notification.channel, Notification.status)
    )
    pending = GaugeMetricFamily(
        "tokendesk_notifications_pending",
        "Notifications in the outbox waiting to be delivered (or retried), by channel.",
        labels=["channel"],
    )
    given_up = GaugeMetricFamily(
        "tokendesk_notifications_failed",
        "Notifications given up after retrying, kept 30 days for the delivery view, by channel.",
        labels=["channel"],
    )
    found = {(channel, status): n for channel, status, n in await session.execute(counted)}
    for channel in Channel:
        pending.add_metric([channel.value], found.get((channel.value, Status.PENDING.value), 0))
        given_up.add_metric([channel.value], found.get((channel.value, Status.FAILED.value), 0))
    return [pending, given_up]
