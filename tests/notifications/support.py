"""Helpers for the notification tests: webhooks added through the service, the outbox read."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from tests.factories import Person
from tests.notifications.receivers import Receiver
from tests.token_requests.support import actor_for
from tokendesk.db import Database
from tokendesk.notifications import channels
from tokendesk.notifications.models import Attempt, Notification
from tokendesk.notifications.schemas import WebhookIn


async def add_webhook(
    database: Database,
    admin: Person,
    receiver: Receiver,
    path: str,
    *,
    format: str = "json",
    team_id: int | None = None,
) -> int:
    actor = await actor_for(database, admin)
    data = WebhookIn(name=path.strip("/"), url=receiver.url(path), format=format, team_id=team_id)  # type: ignore[arg-type]
    async with database.transaction() as s:
        row, secret = await channels.create_webhook(s, actor=actor, data=data)
    receiver.secrets[path] = secret
    return row.id


async def outbox(database: Database, **where: Any) -> list[Notification]:
    async with database.transaction(write=False) as s:
        stmt = select(Notification).order_by(Notification.id)
        for name, value in where.items():
            stmt = stmt.where(getattr(Notification, name) == value)
        return list(await s.scalars(stmt))


async def attempts_of(database: Database, notification_id: int) -> list[Attempt]:
    async with database.transaction(write=False) as s:
        rows = await s.scalars(
            select(Attempt).where(Attempt.notification_id == notification_id).order_by(Attempt.id)
        )
        return list(rows)
