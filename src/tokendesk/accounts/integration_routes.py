"""Integrations REST API: the keys chat apps call the gateway with, for org admins.

HTTP only: every rule lives in :mod:`tokendesk.accounts.integrations`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Response, status

from tokendesk.accounts import integrations
from tokendesk.accounts.schemas import (
    IntegrationCreated,
    IntegrationIn,
    IntegrationOut,
    IntegrationUpdate,
)
from tokendesk.bounds import path_id
from tokendesk.deps import DbSession, OrgAdminActor, OrgAdminReader, ReadSession

router = APIRouter(tags=["integrations"])

IntegrationId = Annotated[int, path_id("integration")]


@router.get("/integrations", response_model=list[IntegrationOut])
async def list_integrations(session: ReadSession, actor: OrgAdminReader) -> list[IntegrationOut]:
    """The organization's integrations, active ones first; never a key or a secret."""
    rows = await integrations.list_integrations(session, actor=actor)
    return [IntegrationOut.of(row) for row in rows]


@router.post(
    "/integrations", response_model=IntegrationCreated, status_code=status.HTTP_201_CREATED
)
async def create_integration(
    data: IntegrationIn, session: DbSession, actor: OrgAdminActor
) -> IntegrationCreated:
    """A new integration and its key, returned here once and never again."""
    integration, key = await integrations.create_integration_as(session, actor=actor, data=data)
    return IntegrationCreated(**IntegrationOut.of(integration).model_dump(), key=key)


@router.get("/integrations/{integration_id}", response_model=IntegrationOut)
async def read_integration(
    integration_id: IntegrationId, session: ReadSession, actor: OrgAdminReader
) -> IntegrationOut:
    integration = await integrations.get_integration(
        session, actor=actor, integration_id=integration_id
    )
    return IntegrationOut.of(integration)


@router.patch("/integrations/{integration_id}", response_model=IntegrationOut)
async def update_integration(
    integration_id: IntegrationId, data: IntegrationUpdate, session: DbSession, actor: OrgAdminActor
) -> IntegrationOut:
    """Change only the fields sent; ``null`` returns a header to the preset's own and
    removes the JWT secret. The gateway uses the change from its next call on."""
    integration = await integrations.update_integration(
        session, actor=actor, integration_id=integration_id, data=data
    )
    return IntegrationOut.of(integration)


@router.delete("/integrations/{integration_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_integration(
    integration_id: IntegrationId, session: DbSession, actor: OrgAdminActor
) -> Response:
    """Revoke the key: refused from the next call on, on every server process."""
    await integrations.revoke_integration(session, actor=actor, integration_id=integration_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
