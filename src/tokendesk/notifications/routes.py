"""Notifications REST API for org admins: the organization's channels, a test per
channel and the delivery view. HTTP only: the rules live in ``channels.py``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from tokendesk.bounds import path_id
from tokendesk.deps import (
    AppSettings,
    CurrentActor,
    CurrentReader,
    DbSession,
    OrgAdminActor,
    OrgAdminReader,
    ReadSession,
)
from tokendesk.notifications import channels, preferences, team_approvers
from tokendesk.notifications.schemas import (
    DeliveryPage,
    EmailPreference,
    NotificationSettingsIn,
    NotificationSettingsOut,
    PreferencesIn,
    TeamApproversIn,
    TeamApproversOut,
    TestIn,
    TestQueued,
    WebhookCreated,
    WebhookIn,
    WebhookOut,
)

router = APIRouter(prefix="/notifications", tags=["notifications"])

WebhookId = Annotated[int, path_id("webhook")]
TeamId = Annotated[int, path_id("team")]


@router.get("/settings", response_model=NotificationSettingsOut)
async def read_settings(
    session: ReadSession, actor: OrgAdminReader, settings: AppSettings
) -> NotificationSettingsOut:
    """Whether the organization's people get email, and its thresholds."""
    return await channels.read_settings(session, actor=actor, settings=settings)


@router.patch("/settings", response_model=NotificationSettingsOut)
async def update_settings(
    data: NotificationSettingsIn, session: DbSession, actor: OrgAdminActor, settings: AppSettings
) -> NotificationSettingsOut:
    """Change only the fields sent; audited."""
    return await channels.update_settings(session, actor=actor, data=data, settings=settings)


@router.get("/webhooks", response_model=list[WebhookOut])
async def list_webhooks(session: ReadSession, actor: OrgAdminReader) -> list[WebhookOut]:
    """The organization's webhooks; never a secret."""
    return [WebhookOut.of(row) for row in await channels.list_webhooks(session, actor=actor)]


@router.post("/webhooks", response_model=WebhookCreated, status_code=status.HTTP_201_CREATED)
async def create_webhook(
    data: WebhookIn, session: DbSession, actor: OrgAdminActor
) -> WebhookCreated:
    """A new webhook and its signing secret, returned here once and never again."""
    row, secret = await channels.create_webhook(session, actor=actor, data=data)
    return WebhookCreated(**WebhookOut.of(row).model_dump(), secret=secret)


@router.delete("/webhooks/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_webhook(
    webhook_id: WebhookId, session: DbSession, actor: OrgAdminActor
) -> Response:
    """Remove a webhook, and its deliveries still queued; audited."""
    await channels.delete_webhook(session, actor=actor, webhook_id=webhook_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/test", response_model=TestQueued, status_code=status.HTTP_202_ACCEPTED)
async def send_test(data: TestIn, session: DbSession, actor: OrgAdminActor) -> TestQueued:
    """Queue a test message: an email to the caller, or a post to one webhook. Its
    outcome shows in the deliveries."""
    notification_id = await channels.send_test(
        session, actor=actor, channel=data.channel, webhook_id=data.webhook_id
    )
    return TestQueued(notification_id=notification_id)


@router.get("/deliveries", response_model=DeliveryPage)
async def list_deliveries(
    session: ReadSession,
    actor: OrgAdminReader,
    view: Annotated[str, Query(max_length=20)] = "attention",
    limit: Annotated[int, Query(ge=1, le=channels.MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> DeliveryPage:
    """The organization's notifications, newest first: ``attention`` (pending and
    failed, the default), ``pending``, ``failed`` or ``all``; each with its last error."""
    return await channels.list_deliveries(
        session, actor=actor, view=view, limit=limit, offset=offset
    )


@router.get("/preferences", response_model=list[EmailPreference])
async def read_preferences(session: ReadSession, actor: CurrentReader) -> list[EmailPreference]:
    """The emails the caller gets, and which of them they may turn off."""
    return await preferences.read(session, actor=actor)


@router.patch("/preferences", response_model=list[EmailPreference])
async def update_preferences(
    data: PreferencesIn, session: DbSession, actor: CurrentActor
) -> list[EmailPreference]:
    """Turn the caller's optional emails on or off."""
    return await preferences.update(session, actor=actor, data=data)


@router.get("/teams/{team_id}/approvers", response_model=TeamApproversOut)
async def read_team_approvers(
    team_id: TeamId, session: ReadSession, actor: OrgAdminReader
) -> TeamApproversOut:
    """Who hears of the team's new requests, whom it names, and who may be named."""
    return await team_approvers.read(session, actor=actor, team_id=team_id)


@router.put("/teams/{team_id}/approvers", response_model=TeamApproversOut)
async def update_team_approvers(
    team_id: TeamId, data: TeamApproversIn, session: DbSession, actor: OrgAdminActor
) -> TeamApproversOut:
    """Name the team's approvers (its owners or org admins); ``[]`` restores the default:
    its owners, else the organization's admins. Audited."""
    return await team_approvers.update(session, actor=actor, team_id=team_id, data=data)
