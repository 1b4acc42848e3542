"""Balance alerts: a member is told when a debit takes their usage across one of the
organization's thresholds (80% and 100% of what they have this period, say), and when
the run-out forecast says their balance empties before the reset; each at most once
per period.

Every debit goes through ``metering.service.record_usage``, which reads (and on
PostgreSQL locks) the balances before it writes them. Those rows carry the
organization's thresholds (``ledger.usage.MemberBalance``), so :func:`crossings`
compares each user's share used before and after the batch in Python: a debit that
crosses nothing runs no statement here, which keeps the gateway's settlements as
cheap as they were. What does cross is recorded in ``notification_threshold_alerts``
(unique per scope, user, period start and threshold) with INSERT ... ON CONFLICT DO
NOTHING, and only the rows that insert queue an email, in the debit's transaction:
two transactions that both see a crossing cannot both send it.

A member's alerts are their own: they go by email only, never to the organization's
or a team's webhooks, which carry the approval desk's traffic. The pool nearing its
end (:func:`queue_pool_alert`) is the desk's business: the organization's admins by
email and its organization-wide webhooks hear it, once per period.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.models import Organization, Role, User
from tokendesk.analytics.forecast import project
from tokendesk.db import dialect_of, in_list, run_core
from tokendesk.ledger.periods import period_bounds
from tokendesk.ledger.pool import pool_usage
from tokendesk.ledger.usage import MemberBalance
from tokendesk.metering.repository import dialect_insert
from tokendesk.notifications.models import (
    Channel,
    EmailOptOut,
    Kind,
    Notification,
    OrgNotificationSettings,
    Status,
    ThresholdAlert,
    Webhook,
)
from tokendesk.notifications.wakeup import wake

ALERTS = cast(Table, ThresholdAlert.__table__)
NOTIFICATIONS = cast(Table, Notification.__table__)
USER, POOL, RUNOUT, DIGEST = "user", "pool", "runout", "digest"
# The forecast is asked again each time usage crosses another tenth of the allowance:
# often enough to warn early, and a bounded number of times a period (a check at every
# debit would try the insert on every call of someone already warned).
RUNOUT_STEPS = 10


@dataclass(frozen=True)
class Crossing:
    organization_id: int
    user_id: int
    period_start: datetime
    scope: str
    # The thresholds this debit crossed (the forecast's warning: 0).
    percents: tuple[int, ...]
    details: dict[str, Any]


def thresholds_of(text: str) -> list[int]:
    return sorted(int(p) for p in text.split(",") if p.strip())


def crossings(
    balances: Mapping[int, MemberBalance], used: Mapping[int, int], *, now: datetime
) -> list[Crossing]:
    """What adding ``used`` (tokens per user) to ``balances`` (as read before the
    debit) crosses. Pure arithmetic on what the debit already read."""
    found: list[Crossing] = []
    for user_id, delta in used.items():
        balance = balances[user_id]
        given = balance.allocation + balance.granted + balance.adjusted
        if delta <= 0 or given <= 0 or not balance.email_enabled:
            continue
        before, after = balance.used, balance.used + delta
        remaining = balance.remaining - delta
        facts = {
            "used": after,
            "given": given,
            "remaining": remaining,
            "resets_at": balance.period_end.isoformat(),
        }
        crossed = tuple(
            p
            for p in thresholds_of(balance.usage_thresholds)
            if before * 100 < p * given <= after * 100
        )
        of_user = partial(
            Crossing,
            organization_id=balance.organization_id,
            user_id=user_id,
            period_start=balance.period_start,
        )
        if crossed:
            found.append(
                of_user(scope=USER, percents=crossed, details={"percent": max(crossed), **facts})
            )
        if remaining > 0 and before * RUNOUT_STEPS // given < after * RUNOUT_STEPS // given:
            # Paced from the period start: the joining date and the first use this period
            # (which analytics.forecast.pace_since also weighs) would cost a query, and the
            # period start can only make the pace slower, so a warning is never early.
            per_day, runs_out, before_reset = project(
                now=now,
                since=balance.period_start,
                period_end=balance.period_end,
                used=after,
                remaining=remaining,
            )
            if before_reset and runs_out is not None:
                forecast = {"runs_out_at": runs_out.isoformat(), "per_day": per_day}
                found.append(of_user(scope=RUNOUT, percents=(0,), details={**facts, **forecast}))
    return found


async def claim_alerts(
    session: AsyncSession,
    rows: Sequence[tuple[int, str, int, datetime, int]],
    *,
    now: datetime,
) -> set[tuple[str, int, int]]:
    """Record each (organization, scope, subject, period start, percent) not recorded
    before; return the (scope, subject, percent) of those that are new. A row another
    transaction inserted first (committed or not) is skipped: the unique constraint
    decides, so an alert is sent once however many instances see it."""
    if not rows:
        return set()
    statement = (
        dialect_insert(dialect_of(session))(ALERTS)
        .on_conflict_do_nothing(index_elements=["scope", "subject_id", "period_start", "percent"])
        .returning(ALERTS.c.scope, ALERTS.c.subject_id, ALERTS.c.percent)
    )
    params = [
        {
            "organization_id": org_id,
            "scope": scope,
            "subject_id": subject,
            "period_start": start,
            "percent": percent,
            "created_at": now,
        }
        for org_id, scope, subject, start, percent in rows
    ]
    result = await run_core(session, statement, params)
    return {(scope, int(subject), int(percent)) for scope, subject, percent in result}


async def opted_out(session: AsyncSession, user_ids: Sequence[int], kind: Kind) -> set[int]:
    """Who of ``user_ids`` turned the emails of ``kind`` off."""
    if not user_ids:
        return set()
    rows = await run_core(
        session,
        select(EmailOptOut.user_id).where(
            in_list(dialect_of(session), EmailOptOut.user_id, values=user_ids),
            EmailOptOut.kind == kind.value,
        ),
    )
    return {int(user_id) for (user_id,) in rows}


async def insert_notifications(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Queue ``rows`` (pending, due now) and wake the workers once this commits."""
    if rows:
        await run_core(session, insert(NOTIFICATIONS), rows)
        wake(session)


def email_row(
    *, organization_id: int, kind: Kind, user_id: int, details: dict[str, Any], now: datetime
) -> dict[str, Any]:
    return outbox_row(
        organization_id=organization_id, kind=kind, user_id=user_id, details=details, now=now
    )


def outbox_row(
    *,
    organization_id: int,
    kind: Kind,
    details: dict[str, Any],
    now: datetime,
    user_id: int | None = None,
    webhook_id: int | None = None,
) -> dict[str, Any]:
    """One notification's row: an email to ``user_id`` or a post to ``webhook_id``."""
    return {
        "organization_id": organization_id,
        "kind": kind.value,
        "channel": Channel.EMAIL.value if webhook_id is None else Channel.WEBHOOK.value,
        "user_id": user_id,
        "webhook_id": webhook_id,
        "token_request_id": None,
        "details": details,
        "status": Status.PENDING.value,
        "attempts": 0,
        "created_at": now,
        "next_attempt_at": now,
    }


async def queue_balance_alerts(
    session: AsyncSession, found: Sequence[Crossing], *, now: datetime
) -> int:
    """Record ``found`` and queue an email for each crossing seen for the first time
    this period (one crossing past several thresholds: one email, the highest); returns
    how many were queued. Runs in the debit's transaction."""
    if not found:
        return 0
    fresh = await claim_alerts(
        session,
        [
            (c.organization_id, c.scope, c.user_id, c.period_start, p)
            for c in found
            for p in c.percents
        ],
        now=now,
    )
    news: list[tuple[Crossing, Kind, dict[str, Any]]] = []
    for crossing in found:
        new = [p for p in crossing.percents if (crossing.scope, crossing.user_id, p) in fresh]
        if not new:
            continue
        if crossing.scope == USER:
            news.append(
                (crossing, Kind.BALANCE_THRESHOLD, {**crossing.details, "percent": max(new)})
            )
        else:
            news.append((crossing, Kind.BALANCE_RUNOUT, crossing.details))
    # One preference covers both: the member's warnings about their own balance.
    refused = await opted_out(
        session, sorted({c.user_id for c, _, _ in news}), Kind.BALANCE_THRESHOLD
    )
    rows = [
        email_row(
            organization_id=c.organization_id, kind=kind, user_id=c.user_id, details=d, now=now
        )
        for c, kind, d in news
        if c.user_id not in refused
    ]
    await insert_notifications(session, rows)
    return len(rows)


async def queue_pool_alert(
    session: AsyncSession,
    *,
    organization_id: int,
    settings: OrgNotificationSettings,
    now: datetime,
) -> int:
    """Tell the organization's admins (by email, and its organization-wide webhooks) that
    this period's pool is handed out past ``settings.pool_threshold``, once per period;
    returns how many notifications were queued. Called after decisions are written, in
    their transaction: grants are what use a pool up between resets."""
    threshold = settings.pool_threshold
    org = await session.get(Organization, organization_id)
    if threshold is None or org is None or org.pool is None or org.pool <= 0:
        return 0
    usage = await pool_usage(session, org=org, now=now)
    if usage is None:
        return 0
    handed_out = usage.pool - usage.left
    if handed_out * 100 < threshold * usage.pool:
        return 0
    start, _ = period_bounds(now, reset_day=org.reset_day, timezone=org.timezone)
    if not await claim_alerts(session, [(org.id, POOL, org.id, start, threshold)], now=now):
        return 0
    details = {
        "percent": handed_out * 100 // usage.pool,
        "threshold": threshold,
        "used": handed_out,
        "pool": usage.pool,
        "left": usage.left,
    }
    rows: list[dict[str, Any]] = []
    if settings.email_enabled:
        admins = list(
            await session.scalars(
                select(User.id)
                .where(
                    User.organization_id == org.id,
                    User.role == Role.ORG_ADMIN.value,
                    User.is_active.is_(True),
                )
                .order_by(User.id)
            )
        )
        refused = await opted_out(session, admins, Kind.POOL_THRESHOLD)
        rows += [
            outbox_row(
                organization_id=org.id,
                kind=Kind.POOL_THRESHOLD,
                user_id=admin,
                details=details,
                now=now,
            )
            for admin in admins
            if admin not in refused
        ]
    hooks = await session.scalars(
        select(Webhook.id)
        .where(Webhook.organization_id == org.id, Webhook.team_id.is_(None))
        .order_by(Webhook.id)
    )
    rows += [
        outbox_row(
            organization_id=org.id, kind=Kind.POOL_THRESHOLD, webhook_id=h, details=details, now=now
        )
        for h in hooks
    ]
    await insert_notifications(session, rows)
    return len(rows)
