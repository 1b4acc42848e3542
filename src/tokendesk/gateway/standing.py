"""Where a chat app's user stands: their balance for the balance endpoint, and the
headers every gateway reply carries for clients that show a low balance.

The headers come from what the hold's own statement returned (:class:`Hold`), and the
organization's threshold from a small cache: a reply costs no query of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.keycache import KeyOwner
from tokendesk.accounts.models import Organization
from tokendesk.config import Settings
from tokendesk.db import Database, utcnow
from tokendesk.errors import NotFound
from tokendesk.gateway.schemas import ChatAppBalance, PendingOut
from tokendesk.ledger import service as ledger
from tokendesk.ledger.holds import Hold
from tokendesk.token_requests import service as token_requests
from tokendesk.token_requests.links import link_expiry, request_link

log = logging.getLogger(__name__)

REMAINING_HEADER = "X-Tokendesk-Remaining"
RESET_HEADER = "X-Tokendesk-Reset-At"
LOW_HEADER = "X-Tokendesk-Low-Balance"
LINK_HEADER = "X-Tokendesk-Request-Link"


def utc_iso(moment: datetime) -> str:
    """ISO 8601 in UTC to the second, as the headers and the endpoint give times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Thresholds:
    """Each organization's low-balance threshold (``low_balance_percent``), read once
    and trusted for ``ttl_seconds`` (the key cache's lifetime): the gateway's replies
    need it on every call, and a changed setting reaches them within that time."""

    def __init__(
        self,
        database: Database,
        *,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.database = database
        self.ttl = ttl_seconds
        self._clock = clock
        self._entries: dict[int, tuple[float, int]] = {}
        self._flights: dict[int, asyncio.Future[int]] = {}

    def cached(self, organization_id: int) -> int | None:
        """The threshold if it is at hand, without a coroutine: the hot path's case."""
        hit = self._entries.get(organization_id)
        if hit is not None and hit[0] > self._clock():
            return hit[1]
        return None

    async def low_percent(self, organization_id: int) -> int | None:
        """The threshold, or None where it cannot be read now: a call already holding
        its tokens goes ahead without the low-balance flag rather than fail."""
        percent = self.cached(organization_id)
        if percent is not None:
            return percent
        flight = self._flights.get(organization_id)
        if flight is None:
            flight = asyncio.ensure_future(self._look_up(organization_id))
            self._flights[organization_id] = flight
            flight.add_done_callback(lambda _: self._flights.pop(organization_id, None))
        try:
            # Shielded: a caller who goes away must not cancel the answer others wait for.
            return await asyncio.shield(flight)
        except Exception:
            log.warning("reading the low-balance threshold of %d failed", organization_id)
            return None

    async def _look_up(self, organization_id: int) -> int:
        confirmed = self._clock()
        async with self.database.transaction(write=False) as session:
            percent = await session.scalar(
                select(Organization.low_balance_percent).where(Organization.id == organization_id)
            )
        if percent is None:
            raise NotFound(f"organization {organization_id} not found")
        self._entries[organization_id] = (confirmed + self.ttl, percent)
        return percent


def standing_headers(
    hold: Hold, *, low_percent: int | None, link: Callable[[], str]
) -> dict[str, str]:
    """What the hold leaves, as headers: tokens left and the next reset always, the
    low-balance flag and the member's request link (``link``, signed only then) when
    the balance is under the threshold."""
    headers = {REMAINING_HEADER: str(hold.remaining), RESET_HEADER: utc_iso(hold.resets_at)}
    if low_percent is not None and ledger.is_low(
        hold.remaining, hold.given, low_percent=low_percent
    ):
        headers[LOW_HEADER] = "true"
        headers[LINK_HEADER] = link()
    return headers


async def balance_for(
    session: AsyncSession, *, caller: KeyOwner, settings: Settings, base: str
) -> ChatAppBalance:
    """The caller's balance as a chat app shows it: the same figures and threshold as
    tokendesk's own chat app, their request link and their pending request. Reads only:
    an ended period is shown as its rollover will leave it."""
    balance = await ledger.current_balance(session, user_id=caller.user_id)
    org = (
        await session.execute(
            select(Organization.low_balance_percent, Organization.timezone).where(
                Organization.id == caller.organization_id
            )
        )
    ).first()
    if org is None:
        raise NotFound(f"organization {caller.organization_id} not found")
    low_percent, timezone = org
    # Measured as the chat app's indicator measures it: a debit carried from the last
    # period counts against what is left, not against what the period gives.
    carried = await ledger.opening_debit(session, balance=balance)
    total = max(balance.allocation + balance.granted + balance.adjusted - carried, 0)
    pending = await token_requests.pending_of(session, user_id=caller.user_id)
    now = utcnow()
    link = request_link(settings, user_id=caller.user_id, now=now, base=base)
    return ChatAppBalance(
        user_id=caller.user_id,
        email=caller.email,
        remaining=balance.remaining,
        allocation=balance.allocation,
        limit=total,
        used=balance.used,
        reserved=balance.reserved,
        period_start=balance.period_start,
        reset_at=balance.period_end,
        low=ledger.is_low(balance.remaining, total, low_percent=low_percent),
        low_balance_percent=low_percent,
        timezone=timezone,
        request_link=link,
        request_link_expires_at=link_expiry(settings, now=now),
        pending_request=None if pending is None else PendingOut(**asdict(pending)),
    )
