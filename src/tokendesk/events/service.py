"""Who may see which event, and the snapshot a client gets when it (re)connects."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.actor import Actor
from tokendesk.events.bus import Event
from tokendesk.ledger import service as ledger
from tokendesk.token_requests import service as token_requests


def visible_to(actor: Actor, event: Event) -> bool:
    """Members see their own events; admins also see the queue events of their scope."""
    if event.audience == "user":
        return event.user_id == actor.user_id
    if event.audience == "admins":
        if not actor.is_admin or event.organization_id != actor.organization_id:
            return False
        return actor.can_manage_team(event.team_id)
    return False


async def snapshot(session: AsyncSession, *, actor: Actor) -> dict[str, Any]:
    """Everything a client needs to be correct after a (re)connect, so no event is ever 'lost'."""
    balance = await ledger.current_balance(session, user_id=actor.user_id)
    data: dict[str, Any] = {"user_id": actor.user_id, "balance": ledger.balance_snapshot(balance)}
    if actor.is_admin:
        data["pending_count"] = await token_requests.pending_count(session, actor=actor)
    return data
