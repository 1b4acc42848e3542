"""Writing the outbox: every function here runs in the caller's transaction, so a
notification exists exactly when what it announces was committed.

Who is told, decided once here:
- a new request: the approvers in its scope, those the requester's team names, else
  its owners (other than the requester), else the organization's admins; and the
  webhooks of the organization and of that team;
- a decision: the requester (whatever their preferences: it answers their own
  request), and the same webhooks.

Decisions are written set-based (one INSERT ... SELECT per channel), so a bulk
approval of 10,000 requests adds two statements, not 20,000 rows built in Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Integer,
    String,
    and_,
    exists,
    insert,
    literal,
    null,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.models import Role, TeamOwner, User
from tokendesk.db import UTCDateTime, dialect_of, in_list
from tokendesk.notifications import alerts
from tokendesk.notifications.models import (
    DEFAULT_THRESHOLDS,
    Channel,
    EmailOptOut,
    Kind,
    Notification,
    OrgNotificationSettings,
    Status,
    TeamApprover,
    Webhook,
)
from tokendesk.notifications.wakeup import wake
from tokendesk.token_requests.models import TokenRequest

DEFAULT_POOL_THRESHOLD = 90
DEFAULT_DIGEST_HOUR = 8
COLUMNS = [
    "organization_id",
    "kind",
    "channel",
    "user_id",
    "webhook_id",
    "token_request_id",
    "status",
    "attempts",
    "created_at",
    "next_attempt_at",
]


async def org_settings(session: AsyncSession, organization_id: int) -> OrgNotificationSettings:
    """The organization's settings row, or the defaults (not added to the session)."""
    row = await session.get(OrgNotificationSettings, organization_id)
    if row is not None:
        return row
    return OrgNotificationSettings(
        organization_id=organization_id,
        email_enabled=True,
        usage_thresholds=DEFAULT_THRESHOLDS,
        pool_threshold=DEFAULT_POOL_THRESHOLD,
        digest_enabled=False,
        digest_hour=DEFAULT_DIGEST_HOUR,
    )


def _opted_out(user_id: Any, kind: Kind) -> Any:
    return exists().where(EmailOptOut.user_id == user_id, EmailOptOut.kind == kind.value)


def may_decide_for(team_id: int) -> Any:
    """A person who may decide the requests of ``team_id``'s members: one of its owners
    or an org admin."""
    owns = exists().where(TeamOwner.team_id == team_id, TeamOwner.user_id == User.id)
    return or_(User.role == Role.ORG_ADMIN.value, owns)


async def approvers(
    session: AsyncSession, *, organization_id: int, team_id: int | None, requester_id: int
) -> list[int]:
    """Who hears of a request of ``team_id``'s member: the approvers the team names
    (those of them who may still decide its requests), else its owners, else the org
    admins. Never the requester (nobody decides their own request); active people only."""
    people = (
        User.organization_id == organization_id,
        User.is_active.is_(True),
        User.id != requester_id,
    )
    if team_id is not None:
        named = await session.scalars(
            select(User.id)
            .join(TeamApprover, TeamApprover.user_id == User.id)
            .where(TeamApprover.team_id == team_id, may_decide_for(team_id), *people)
            .order_by(User.id)
        )
        found = list(named)
        if found:
            return found
        owners = await session.scalars(
            select(User.id)
            .join(TeamOwner, TeamOwner.user_id == User.id)
            .where(TeamOwner.team_id == team_id, *people)
            .order_by(User.id)
        )
        found = list(owners)
        if found:
            return found
    admins = await session.scalars(
        select(User.id).where(User.role == Role.ORG_ADMIN.value, *people).order_by(User.id)
    )
    return list(admins)


def _has_webhook_for(organization_id: int) -> Any:
    return select(Webhook.id).where(Webhook.organization_id == organization_id).limit(1)


async def request_created(
    session: AsyncSession,
    *,
    organization_id: int,
    request_id: int,
    requester_id: int,
    team_id: int | None,
    now: datetime,
) -> None:
    """Queue the notifications of a new request (see the module's docstring)."""
    settings = await org_settings(session, organization_id)
    rows: list[dict[str, Any]] = []
    base = {
        "organization_id": organization_id,
        "kind": Kind.REQUEST_CREATED.value,
        "token_request_id": request_id,
        "status": Status.PENDING.value,
        "attempts": 0,
        "created_at": now,
        "next_attempt_at": now,
    }
    if settings.email_enabled:
        people = await approvers(
            session, organization_id=organization_id, team_id=team_id, requester_id=requester_id
        )
        if people:
            refused = set(
                await session.scalars(
                    select(EmailOptOut.user_id).where(
                        in_list(dialect_of(session), EmailOptOut.user_id, values=people),
                        EmailOptOut.kind == Kind.REQUEST_CREATED.value,
                    )
                )
            )
            rows += [
                {**base, "channel": Channel.EMAIL.value, "user_id": person, "webhook_id": None}
                for person in people
                if person not in refused
            ]
    hooks = await session.scalars(
        select(Webhook.id).where(
            Webhook.organization_id == organization_id,
            or_(Webhook.team_id.is_(None), Webhook.team_id == team_id),
        )
    )
    rows += [
        {**base, "channel": Channel.WEBHOOK.value, "user_id": None, "webhook_id": hook}
        for hook in hooks
    ]
    if rows:
        await session.execute(insert(Notification), rows)
        wake(session)


async def requests_decided(
    session: AsyncSession, *, organization_id: int, request_ids: Sequence[int], now: datetime
) -> None:
    """Queue the notifications of decisions already written (approved or rejected):
    the one path every decision takes, one request's or a bulk's, a person's or a rule's.
    The message is read from the request when it is delivered: a decision never changes."""
    if not request_ids:
        return
    settings = await org_settings(session, organization_id)
    dialect = dialect_of(session)
    decided = in_list(dialect, TokenRequest.id, values=request_ids)
    constants = (
        literal(organization_id, BigInteger()),
        literal(Kind.REQUEST_DECIDED.value, String()),
    )
    tail = (
        literal(Status.PENDING.value, String()),
        literal(0, Integer()),
        literal(now, UTCDateTime()),
        literal(now, UTCDateTime()),
    )
    queued = False
    if settings.email_enabled:
        emails = (
            select(
                *constants,
                literal(Channel.EMAIL.value, String()),
                TokenRequest.user_id,
                null(),
                TokenRequest.id,
                *tail,
            )
            .join(User, User.id == TokenRequest.user_id)
            .where(decided, User.is_active.is_(True))
        )
        result = await session.execute(insert(Notification).from_select(COLUMNS, emails))
        queued = bool(result.rowcount)  # type: ignore[attr-defined]
    if (await session.scalar(_has_webhook_for(organization_id))) is not None:
        posts = select(
            *constants,
            literal(Channel.WEBHOOK.value, String()),
            null(),
            Webhook.id,
            TokenRequest.id,
            *tail,
        ).join(
            Webhook,
            and_(
                Webhook.organization_id == TokenRequest.organization_id,
                or_(Webhook.team_id.is_(None), Webhook.team_id == TokenRequest.team_id),
            ),
        )
        await session.execute(insert(Notification).from_select(COLUMNS, posts.where(decided)))
        queued = True
    if queued:
        wake(session)
    await alerts.queue_pool_alert(
        session, organization_id=organization_id, settings=settings, now=now
    )


async def queue_test(
    session: AsyncSession,
    *,
    organization_id: int,
    user_id: int | None = None,
    webhook_id: int | None = None,
    now: datetime,
) -> int:
    """A test message to one person's email or one webhook; returns its id."""
    row = Notification(
        organization_id=organization_id,
        kind=Kind.TEST.value,
        channel=Channel.EMAIL.value if webhook_id is None else Channel.WEBHOOK.value,
        user_id=user_id,
        webhook_id=webhook_id,
        status=Status.PENDING.value,
        attempts=0,
        created_at=now,
        next_attempt_at=now,
    )
    session.add(row)
    await session.flush()
    wake(session)
    return row.id
