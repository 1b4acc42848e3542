"""The workers' wake-up call: a transaction that queued notifications says so, and
once it commits a worker (on any instance, through the bus) looks for due ones now
rather than at its next poll."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.events.bus import Event, emit

# A system event: published after commit, never on rollback.
QUEUED = "notifications.queued"


def wake(session: AsyncSession) -> None:
    emit(session, Event(type=QUEUED, data={}, audience="system"))
