"""The member's pages: the chat app (``/``, ``/chat``, ``/chat/{id}``) and ``/settings``.

Pages render what the member sees on arrival (balance, pending request,
conversations) from the same services as the REST API; from then on
``static/chat.js`` keeps them live from ``/events`` and calls the REST API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts import api_keys, users
from tokendesk.accounts.actor import Actor
from tokendesk.bounds import parse_id
from tokendesk.chat import service as chat
from tokendesk.chat.schemas import ConversationOut, MessageOut
from tokendesk.deps import ReadSession
from tokendesk.errors import NotFound
from tokendesk.ledger import service as ledger
from tokendesk.token_requests import service as token_requests
from tokendesk.web.pages import page_actor, render

router = APIRouter(include_in_schema=False)

# Amounts offered in the request dialog; only those the organization allows are shown.
REQUEST_PRESETS = (10_000, 50_000, 100_000, 250_000)
# Red below this share of the period's tokens, whatever the organization's low threshold.
CRITICAL_PERCENT = 5
SIDEBAR_LIMIT = 100


@dataclass(frozen=True)
class Indicator:
    """What the header's token indicator shows; ``static/chat.js`` mirrors this logic."""

    remaining: int
    total: int
    used: int
    # Granted and adjusted tokens on top of the allocation this period (may be negative).
    extra: int
    percent: int
    level: str  # "ok" | "low" | "critical" | "empty"
    # The debit the period opened with (0 or negative) and the month it came from.
    carried: int = 0
    carried_from: str = ""


def indicator_for(
    balance: dict[str, Any], *, low_percent: int, carried: int = 0, carried_from: str = ""
) -> Indicator:
    """Bar and colour from the balance.

    The bar measures what is left of everything this period gives (allocation
    plus grants and adjustments), so an approved request visibly fills it up.
    A debit carried from the last period is shown on its own and counts against
    what is left, not against what the period gives.
    """
    remaining = int(balance["remaining"])
    extra = int(balance["granted"]) + int(balance["adjusted"]) - carried
    total = max(int(balance["allocation"]) + extra, 0)
    percent = 0 if total <= 0 else max(0, min(100, remaining * 100 // total))
    if remaining <= 0:
        level = "empty"
    elif total <= 0 or remaining * 100 <= total * CRITICAL_PERCENT:
        level = "critical"
    elif remaining * 100 < total * low_percent:
        level = "low"
    else:
        level = "ok"
    return Indicator(
        remaining=remaining,
        total=total,
        used=int(balance["used"]),
        extra=extra,
        percent=percent,
        level=level,
        carried=carried,
        carried_from=carried_from,
    )


def request_presets(max_request: int) -> list[int]:
    presets = [amount for amount in REQUEST_PRESETS if amount <= max_request]
    return presets or [max_request]


async def _chat_page(
    request: Request, session: AsyncSession, actor: Actor, conversation_id: int | None
) -> HTMLResponse:
    """Render the chat app, opening ``conversation_id`` when given.

    Someone else's (or a deleted) conversation renders a fresh chat with a
    notice and status 404, never a hint that it exists.
    """
    profile = await users.me(session, actor=actor)
    org = profile.organization
    balance = ledger.balance_snapshot(profile.balance)
    carried = await ledger.opening_debit(session, balance=profile.balance)
    carried_from = ledger.carried_from(profile.balance.period_start, timezone=org.timezone)
    own = await token_requests.own_pending(session, actor=actor)
    pending = None if own is None else {"id": own.id, "amount": own.amount}
    conversations, _ = await chat.list_conversations(session, actor=actor, limit=SIDEBAR_LIMIT)
    current = None
    messages: list[MessageOut] = []
    missing = False
    if conversation_id is not None:
        try:
            found = await chat.get_with_messages(
                session, actor=actor, conversation_id=conversation_id
            )
        except NotFound:
            missing = True
        else:
            current = ConversationOut.model_validate(found.conversation)
            messages = [MessageOut.model_validate(m) for m in found.messages]
    boot = {
        "user_id": actor.user_id,
        "email": actor.email,
        "balance": balance,
        "carried": {"amount": carried, "from": carried_from},
        "low_balance_percent": org.low_balance_percent,
        "critical_percent": CRITICAL_PERCENT,
        "max_request": org.max_request,
        "timezone": org.timezone,
        "pending": pending,
        "conversation": None if current is None else current.model_dump(mode="json"),
        "messages": [{"role": m.role.value, "content": m.content} for m in messages],
    }
    return render(
        request,
        "chat/chat.html",
        status_code=404 if missing else 200,
        missing=missing,
        org=org,
        balance=balance,
        next_reset_at=profile.balance.period_end,
        indicator=indicator_for(
            balance,
            low_percent=org.low_balance_percent,
            carried=carried,
            carried_from=carried_from,
        ),
        pending=pending,
        presets=request_presets(org.max_request),
        conversations=[ConversationOut.model_validate(c) for c in conversations],
        current=current,
        messages=messages,
        boot=boot,
    )


@router.get("/", response_class=HTMLResponse)
async def home(request: Request, session: ReadSession) -> HTMLResponse:
    actor = await page_actor(request, session)
    return await _chat_page(request, session, actor, None)


@router.get("/chat", response_class=HTMLResponse)
async def new_chat(request: Request, session: ReadSession) -> HTMLResponse:
    actor = await page_actor(request, session)
    return await _chat_page(request, session, actor, None)


@router.get("/chat/{conversation_id}", response_class=HTMLResponse)
async def open_chat(request: Request, session: ReadSession, conversation_id: str) -> HTMLResponse:
    actor = await page_actor(request, session)
    # A mistyped address gets the page's own "not found", not a JSON validation error.
    wanted = parse_id(conversation_id) or 0
    return await _chat_page(request, session, actor, wanted)


@router.get("/settings", response_class=HTMLResponse)
async def settings(request: Request, session: ReadSession) -> HTMLResponse:
    actor = await page_actor(request, session)
    keys = await api_keys.list_own_keys(session, actor=actor)
    return render(
        request,
        "chat/settings.html",
        keys=keys,
        gateway_url=str(request.base_url).rstrip("/") + "/v1",
    )
