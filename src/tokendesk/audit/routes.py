"""Audit log REST API: org admins read their organization's trail."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from tokendesk.audit.repository import AuditFilter, AuditRow, audit_page
from tokendesk.audit.schemas import AuditActor, AuditEntryOut, AuditPage
from tokendesk.bounds import Offset, QueryId
from tokendesk.deps import OrgAdminReader, ReadSession
from tokendesk.errors import InvalidInput

router = APIRouter()


def _aware(value: datetime | None) -> datetime | None:
    # A timestamp without an offset is read as UTC rather than refused.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _entry_out(row: AuditRow) -> AuditEntryOut:
    entry, actor = row.entry, row.actor
    return AuditEntryOut(
        id=entry.id,
        actor=AuditActor(id=actor.id, name=actor.name, email=actor.email) if actor else None,
        action=entry.action,
        target_type=entry.target_type,
        target_id=entry.target_id,
        details=entry.details or {},
        created_at=entry.created_at,
    )


@router.get("/audit", response_model=AuditPage, tags=["audit"])
async def list_audit(
    session: ReadSession,
    actor: OrgAdminReader,
    actor_id: QueryId | None = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    target_type: Annotated[str | None, Query(max_length=32)] = None,
    target_id: Annotated[str | None, Query(max_length=64)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> AuditPage:
    """Newest first. ``since`` is inclusive, ``until`` exclusive."""
    since, until = _aware(since), _aware(until)
    if since is not None and until is not None and until < since:
        raise InvalidInput("until: must not be before since", field="until")
    rows, total = await audit_page(
        session,
        AuditFilter(
            organization_id=actor.organization_id,
            actor_id=actor_id,
            action=action,
            target_type=target_type,
            target_id=target_id,
            since=since,
            until=until,
        ),
        limit=limit,
        offset=offset,
    )
    return AuditPage(items=[_entry_out(row) for row in rows], total=total)
