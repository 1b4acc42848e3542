"""The organization's channels, for its admins: email on or off, webhooks added and
removed (each secret returned once, at creation), thresholds, a test per channel,
and the deliveries still pending or given up. Every change is audited, never with
a secret."""

from __future__ import annotations

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.actor import Actor
from tokendesk.accounts.lookups import get_team_in_org
from tokendesk.accounts.models import User
from tokendesk.accounts.service import require_org_admin
from tokendesk.audit import service as audit
from tokendesk.config import Settings
from tokendesk.db import utcnow
from tokendesk.errors import InvalidInput, NotFound
from tokendesk.notifications import outbox
from tokendesk.notifications.models import (
    Notification,
    OrgNotificationSettings,
    Status,
    Webhook,
)
from tokendesk.notifications.schemas import (
    DeliveryOut,
    DeliveryPage,
    NotificationSettingsIn,
    NotificationSettingsOut,
    WebhookIn,
)
from tokendesk.notifications.webhooks import new_secret

MAX_WEBHOOKS = 50
MAX_PAGE = 200
# The delivery view lists what needs an admin's eye; "all" adds what went through.
VIEWS = {
    "attention": (Status.PENDING.value, Status.FAILED.value),
    "pending": (Status.PENDING.value,),
    "failed": (Status.FAILED.value,),
    "all": tuple(s.value for s in Status),
}


def _thresholds(text: str) -> list[int]:
    return sorted(int(p) for p in text.split(",") if p.strip())


def settings_out(row: OrgNotificationSettings, settings: Settings) -> NotificationSettingsOut:
    return NotificationSettingsOut(
        email_enabled=row.email_enabled,
        email_available=settings.smtp_host is not None,
        usage_thresholds=_thresholds(row.usage_thresholds),
        pool_threshold=row.pool_threshold,
        digest_enabled=row.digest_enabled,
        digest_hour=row.digest_hour,
    )


async def read_settings(
    session: AsyncSession, *, actor: Actor, settings: Settings
) -> NotificationSettingsOut:
    require_org_admin(actor)
    return settings_out(await outbox.org_settings(session, actor.organization_id), settings)


async def update_settings(
    session: AsyncSession, *, actor: Actor, data: NotificationSettingsIn, settings: Settings
) -> NotificationSettingsOut:
    require_org_admin(actor)
    org_id = actor.organization_id
    row = await session.get(OrgNotificationSettings, org_id)
    if row is None:
        row = await outbox.org_settings(session, org_id)
        session.add(row)
    changes: dict[str, object] = {}
    if data.email_enabled is not None and data.email_enabled != row.email_enabled:
        row.email_enabled = changes["email_enabled"] = data.email_enabled
    if data.digest_enabled is not None and data.digest_enabled != row.digest_enabled:
        row.digest_enabled = changes["digest_enabled"] = data.digest_enabled
    if data.digest_hour is not None and data.digest_hour != row.digest_hour:
        row.digest_hour = changes["digest_hour"] = data.digest_hour
    if data.usage_thresholds is not None:
        text = ",".join(str(p) for p in data.usage_thresholds)
        if text != row.usage_thresholds:
            row.usage_thresholds = text
            changes["usage_thresholds"] = data.usage_thresholds
    if data.clear_pool_threshold and data.pool_threshold is not None:
        raise InvalidInput(
            "pool_threshold: give a percentage or clear_pool_threshold, not both",
            field="pool_threshold",
        )
    wanted = None if data.clear_pool_threshold else data.pool_threshold
    if (data.clear_pool_threshold or wanted is not None) and wanted != row.pool_threshold:
        row.pool_threshold = changes["pool_threshold"] = wanted
    await session.flush()
    if changes:
        await audit.record(
            session,
            organization_id=org_id,
            actor_id=actor.user_id,
            action="notifications.settings_changed",
            target_type="organization",
            target_id=org_id,
            details=changes,
        )
    return settings_out(row, settings)


async def list_webhooks(session: AsyncSession, *, actor: Actor) -> list[Webhook]:
    require_org_admin(actor)
    rows = await session.scalars(
        select(Webhook).where(Webhook.organization_id == actor.organization_id).order_by(Webhook.id)
    )
    return list(rows)


async def create_webhook(
    session: AsyncSession, *, actor: Actor, data: WebhookIn
) -> tuple[Webhook, str]:
    """A new webhook and its signing secret, which no later answer shows again."""
    require_org_admin(actor)
    org_id = actor.organization_id
    if data.team_id is not None:
        await get_team_in_org(session, organization_id=org_id, team_id=data.team_id)
    count = await session.scalar(
        select(func.count()).select_from(Webhook).where(Webhook.organization_id == org_id)
    )
    if (count or 0) >= MAX_WEBHOOKS:
        raise InvalidInput(
            f"url: an organization has at most {MAX_WEBHOOKS} webhooks; remove one first",
            field="url",
        )
    secret = new_secret()
    row = Webhook(
        organization_id=org_id,
        team_id=data.team_id,
        name=data.name,
        url=data.url,
        format=data.format.value,
        secret=secret,
        created_by=actor.user_id,
        created_at=utcnow(),
    )
    session.add(row)
    await session.flush()
    await audit.record(
        session,
        organization_id=org_id,
        actor_id=actor.user_id,
        action="notifications.webhook_created",
        target_type="notification_webhook",
        target_id=row.id,
        details={"name": row.name, "url": row.url, "format": row.format, "team_id": row.team_id},
    )
    return row, secret


async def get_webhook(session: AsyncSession, *, actor: Actor, webhook_id: int) -> Webhook:
    require_org_admin(actor)
    row = await session.get(Webhook, webhook_id)
    if row is None or row.organization_id != actor.organization_id:
        raise NotFound(f"webhook {webhook_id} not found")
    return row


async def delete_webhook(session: AsyncSession, *, actor: Actor, webhook_id: int) -> None:
    """Remove a webhook; its deliveries still queued go with it."""
    row = await get_webhook(session, actor=actor, webhook_id=webhook_id)
    details = {"name": row.name, "url": row.url, "format": row.format, "team_id": row.team_id}
    await session.delete(row)
    await session.flush()
    await audit.record(
        session,
        organization_id=actor.organization_id,
        actor_id=actor.user_id,
        action="notifications.webhook_deleted",
        target_type="notification_webhook",
        target_id=webhook_id,
        details=details,
    )


async def send_test(
    session: AsyncSession, *, actor: Actor, channel: str, webhook_id: int | None
) -> int:
    """Queue a test: an email to the caller, or a post to one webhook."""
    require_org_admin(actor)
    now = utcnow()
    if channel == "email":
        if webhook_id is not None:
            raise InvalidInput("webhook_id: only a webhook test names one", field="webhook_id")
        return await outbox.queue_test(
            session, organization_id=actor.organization_id, user_id=actor.user_id, now=now
        )
    if webhook_id is None:
        raise InvalidInput("webhook_id: name the webhook to test", field="webhook_id")
    row = await get_webhook(session, actor=actor, webhook_id=webhook_id)
    return await outbox.queue_test(
        session, organization_id=actor.organization_id, webhook_id=row.id, now=now
    )


async def list_deliveries(
    session: AsyncSession,
    *,
    actor: Actor,
    view: str = "attention",
    limit: int = 50,
    offset: int = 0,
) -> DeliveryPage:
    """The organization's notifications in ``view``, newest first, with their last error."""
    require_org_admin(actor)
    if view not in VIEWS:
        raise InvalidInput(f"view: must be one of {', '.join(VIEWS)}", field="view")
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit: must be between 1 and {MAX_PAGE}", field="limit")
    if not 0 <= offset <= 1_000_000:
        raise InvalidInput("offset: must be between 0 and 1000000", field="offset")
    where = (
        Notification.organization_id == actor.organization_id,
        or_(*(Notification.status == s for s in VIEWS[view])),
    )
    total = await session.scalar(select(func.count()).select_from(Notification).where(*where))
    rows = await session.execute(
        select(Notification, User.email, Webhook.name)
        .outerjoin(User, User.id == Notification.user_id)
        .outerjoin(Webhook, Webhook.id == Notification.webhook_id)
        .where(*where)
        .order_by(Notification.id.desc())
        .limit(limit)
        .offset(offset)
    )
    items = [
        DeliveryOut(
            id=n.id,
            kind=n.kind,
            channel=n.channel,
            status=n.status,
            attempts=n.attempts,
            to=(email or "—") if n.channel == "email" else f"webhook {hook or '—'}",
            token_request_id=n.token_request_id,
            created_at=n.created_at,
            next_attempt_at=n.next_attempt_at if n.status == Status.PENDING else None,
            sent_at=n.sent_at,
            last_error=n.last_error,
        )
        for n, email, hook in rows
    ]
    return DeliveryPage(items=items, total=int(total or 0))
