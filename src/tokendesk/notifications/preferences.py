"""Each person's choice of emails. Every kind but one can be turned off: new requests
to decide, the daily digest of those still pending, warnings about one's own balance
(thresholds and the run-out forecast), the pool nearing its end (admins). The decision
on one's own request always comes."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.actor import Actor
from tokendesk.notifications.models import EmailOptOut, Kind
from tokendesk.notifications.schemas import EmailPreference, PreferencesIn

# (field of PreferencesIn, the kind it turns off, what the person reads).
OPTIONAL = (
    ("new_requests", Kind.REQUEST_CREATED, "A new request I can decide (team owners and admins)"),
    ("daily_digest", Kind.DIGEST, "A daily digest of requests still waiting for me"),
    (
        "balance_alerts",
        Kind.BALANCE_THRESHOLD,
        "My balance crossing the organization's thresholds, or set to run out before the reset",
    ),
    ("pool_alerts", Kind.POOL_THRESHOLD, "The organization's pool nearing its end (org admins)"),
)


async def read(session: AsyncSession, *, actor: Actor) -> list[EmailPreference]:
    off = set(
        await session.scalars(select(EmailOptOut.kind).where(EmailOptOut.user_id == actor.user_id))
    )
    found = [
        EmailPreference(
            kind=kind.value, description=text, enabled=kind.value not in off, can_turn_off=True
        )
        for _, kind, text in OPTIONAL
    ]
    found.insert(
        1,
        EmailPreference(
            kind=Kind.REQUEST_DECIDED.value,
            description="The decision on my own request",
            enabled=True,
            can_turn_off=False,
        ),
    )
    return found


async def update(
    session: AsyncSession, *, actor: Actor, data: PreferencesIn
) -> list[EmailPreference]:
    for name, kind, _ in OPTIONAL:
        wanted: bool | None = getattr(data, name)
        if wanted is None:
            continue
        await session.execute(
            delete(EmailOptOut).where(
                EmailOptOut.user_id == actor.user_id, EmailOptOut.kind == kind.value
            )
        )
        if not wanted:
            session.add(EmailOptOut(user_id=actor.user_id, kind=kind.value))
    await session.flush()
    return await read(session, actor=actor)
