"""Each person's choice of emails. Today one kind can be turned off: new requests to
decide (approvers). The decision on one's own request always comes."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.actor import Actor
from tokendesk.notifications.models import EmailOptOut, Kind
from tokendesk.notifications.schemas import EmailPreference, PreferencesIn


async def read(session: AsyncSession, *, actor: Actor) -> list[EmailPreference]:
    off = set(
        await session.scalars(select(EmailOptOut.kind).where(EmailOptOut.user_id == actor.user_id))
    )
    return [
        EmailPreference(
            kind=Kind.REQUEST_CREATED.value,
            description="A new request I can decide (team owners and admins)",
            enabled=Kind.REQUEST_CREATED.value not in off,
            can_turn_off=True,
        ),
        EmailPreference(
            kind=Kind.REQUEST_DECIDED.value,
            description="The decision on my own request",
            enabled=True,
            can_turn_off=False,
        ),
    ]


async def update(
    session: AsyncSession, *, actor: Actor, data: PreferencesIn
) -> list[EmailPreference]:
    if data.new_requests is not None:
        kind = Kind.REQUEST_CREATED.value
        await session.execute(
            delete(EmailOptOut).where(
                EmailOptOut.user_id == actor.user_id, EmailOptOut.kind == kind
            )
        )
        if not data.new_requests:
            session.add(EmailOptOut(user_id=actor.user_id, kind=kind))
        await session.flush()
    return await read(session, actor=actor)
