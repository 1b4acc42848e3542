"""SQL for reading the audit log."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.models import User
from tokendesk.audit.models import AuditEntry


@dataclass(frozen=True)
class AuditFilter:
    organization_id: int
    actor_id: int | None = None
    action: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class AuditRow:
    entry: AuditEntry
    actor: User | None


async def audit_page(
    session: AsyncSession, f: AuditFilter, *, limit: int, offset: int
) -> tuple[list[AuditRow], int]:
    """Newest first, with the acting user joined in the same query."""
    conditions = [AuditEntry.organization_id == f.organization_id]
    if f.actor_id is not None:
        conditions.append(AuditEntry.actor_id == f.actor_id)
    if f.action is not None:
        conditions.append(AuditEntry.action == f.action)
    if f.target_type is not None:
        conditions.append(AuditEntry.target_type == f.target_type)
    if f.target_id is not None:
        conditions.append(AuditEntry.target_id == f.target_id)
    if f.since is not None:
        conditions.append(AuditEntry.created_at >= f.since)
    if f.until is not None:
        conditions.append(AuditEntry.created_at < f.until)
    stmt = (
        select(AuditEntry, User, func.count().over().label("total"))
        .outerjoin(User, User.id == AuditEntry.actor_id)
        .where(*conditions)
        .order_by(AuditEntry.created_at.desc(), AuditEntry.id.desc())
        .limit(limit)
        .offset(offset)
    )
    rows = (await session.execute(stmt)).all()
    if rows:
        total = int(rows[0].total)
    elif offset:
        total = int(
            await session.scalar(select(func.count()).select_from(AuditEntry).where(*conditions))
            or 0
        )
    else:
        total = 0
    return [AuditRow(row[0], row[1]) for row in rows], total
