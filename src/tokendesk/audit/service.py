"""Audit trail: who did what to which object, written in the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.models import Organization, User
from tokendesk.audit.models import AuditEntry
from tokendesk.db import utcnow
from tokendesk.ledger.doctor import dangling, unresolved


async def record(
    session: AsyncSession,
    *,
    organization_id: int | None,
    actor_id: int | None,
    action: str,
    target_type: str,
    target_id: object | None,
    details: dict[str, Any] | None = None,
) -> None:
    session.add(
        AuditEntry(
            organization_id=organization_id,
            actor_id=actor_id,
            action=action,
            target_type=target_type,
            target_id=None if target_id is None else str(target_id),
            details=details or {},
            created_at=utcnow(),
        )
    )
    await session.flush()


async def record_many(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Bulk form of :func:`record`; each row carries the same keys as its arguments."""
    if not rows:
        return
    now = utcnow()
    await session.execute(
        insert(AuditEntry),
        [
            {
                "organization_id": row["organization_id"],
                "actor_id": row["actor_id"],
                "action": row["action"],
                "target_type": row["target_type"],
                "target_id": None if row.get("target_id") is None else str(row["target_id"]),
                "details": row.get("details") or {},
                "created_at": now,
            }
            for row in rows
        ],
    )


async def check_references(session: AsyncSession) -> list[str]:
    """Audit rows carry no foreign keys (see ``AuditEntry``): report any whose
    organization or actor does not exist."""
    found = select(func.count(), func.min(AuditEntry.id)).select_from(AuditEntry)
    problems = [
        await dangling(
            session,
            "audit rows name an organization that does not exist",
            unresolved(found, AuditEntry.organization_id, Organization),
        ),
        await dangling(
            session,
            "audit rows name an actor who is not a user",
            unresolved(found, AuditEntry.actor_id, User),
        ),
    ]
    return [problem for problem in problems if problem]
