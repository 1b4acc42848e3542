"""The request page a personal link opens (``/ask/{token}``): one person's balance and
next reset, their request for more tokens (submit, cancel) and the decision, live.

People who chat through another chat app have no tokendesk password; the signed
link (``token_requests.links``) is their only credential, so it is checked on
every request here, the form's own fields never say whose request it is, and
nothing else of tokendesk opens with it. The page calls the same services as the
chat app's "Request more tokens" (the same rules), and ``static/ask.js`` keeps it
live from ``/ask/{token}/events``.

The token is in the address: every response says ``no-store`` and sends no
referrer, so it stays out of caches and out of the pages and assets it links to.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts import users
from tokendesk.accounts.actor import Actor
from tokendesk.accounts.auth import settings_of
from tokendesk.bounds import MAX_TOKENS, parse_count, parse_id
from tokendesk.deps import ReadSession, database_of
from tokendesk.errors import AppError, InvalidInput
from tokendesk.events.routes import live_stream, too_many_streams
from tokendesk.events.service import snapshot
from tokendesk.ledger import service as ledger
from tokendesk.token_requests import decisions
from tokendesk.token_requests import service as token_requests
from tokendesk.token_requests.links import LinkClaim, LinkRefused, link_holder, read_link
from tokendesk.token_requests.schemas import MAX_TEXT
from tokendesk.web.chat import CRITICAL_PERCENT, indicator_for, request_presets
from tokendesk.web.templating import templates

router = APIRouter(include_in_schema=False)

PRIVATE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
}
# What the page says after a form was sent: a fixed set, so nothing the address
# carries is ever shown as text.
OUTCOMES = frozenset({"sent", "cancelled"})
CHANNEL = "request_link"


def _private(response: Response) -> Response:
    response.headers.update(PRIVATE_HEADERS)
    return response


def _refused_page(request: Request, refused: LinkRefused) -> Response:
    response = templates.TemplateResponse(
        request,
        "ask/refused.html",
        {"reason": refused.reason, "csrf_token": ""},
        status_code=refused.status_code,
    )
    return _private(response)


async def _holder(
    request: Request, session: AsyncSession, token: str, claim: LinkClaim | None = None
) -> tuple[Actor, LinkClaim]:
    claim = claim or read_link(settings_of(request), token)
    return await link_holder(session, claim), claim


async def _page(
    request: Request,
    session: AsyncSession,
    *,
    token: str,
    actor: Actor,
    claim: LinkClaim,
    status_code: int = 200,
    outcome: str | None = None,
    error: str | None = None,
    error_field: str | None = None,
    amount: str = "",
    reason: str = "",
) -> Response:
    profile = await users.me(session, actor=actor)
    org = profile.organization
    balance = ledger.balance_snapshot(profile.balance)
    carried = await ledger.opening_debit(session, balance=profile.balance)
    carried_from = ledger.carried_from(profile.balance.period_start, timezone=org.timezone)
    own = await token_requests.own_pending(session, actor=actor)
    pending = None if own is None else {"id": own.id, "amount": own.amount}
    presets = request_presets(org.max_request)
    boot = {
        "user_id": actor.user_id,
        "balance": balance,
        "carried": {"amount": carried, "from": carried_from},
        "low_balance_percent": org.low_balance_percent,
        "critical_percent": CRITICAL_PERCENT,
        "max_request": org.max_request,
        "timezone": org.timezone,
        "pending": pending,
        "events_url": f"/ask/{token}/events",
        "expires_at": claim.expires_at.isoformat(),
    }
    response = templates.TemplateResponse(
        request,
        "ask/ask.html",
        {
            "csrf_token": "",
            "person": profile.user,
            "org": org,
            "balance": balance,
            "next_reset_at": profile.balance.period_end,
            "indicator": indicator_for(
                balance,
                low_percent=org.low_balance_percent,
                carried=carried,
                carried_from=carried_from,
            ),
            "pending": pending,
            "presets": presets,
            "amount": amount or str(presets[1] if len(presets) > 1 else presets[0]),
            "reason": reason,
            "max_text": MAX_TEXT,
            "expires_at": claim.expires_at,
            "token": token,
            "outcome": outcome if outcome in OUTCOMES else None,
            "error": error,
            "error_field": error_field,
            "boot": boot,
        },
        status_code=status_code,
    )
    return _private(response)


@router.get("/ask/{token}", response_class=HTMLResponse)
async def ask_page(
    request: Request, session: ReadSession, token: str, done: str | None = None
) -> Response:
    try:
        actor, claim = await _holder(request, session, token)
    except LinkRefused as refused:
        return _refused_page(request, refused)
    return await _page(request, session, token=token, actor=actor, claim=claim, outcome=done)


def _check_person(actor: Actor, user_id: str | None) -> None:
    """The form names the person the page was shown for; a link never acts for another,
    whatever the form says."""
    if user_id is not None and parse_id(user_id) != actor.user_id:
        raise LinkRefused("other_user", "this link belongs to someone else", status_code=403)


def _amount(raw: str) -> int:
    # Separators as people type them; only ASCII digits (int() takes "٣" too).
    compact = raw.strip().replace(",", "").replace("_", "").replace(" ", "")
    number = parse_count(compact, maximum=MAX_TOKENS)
    if number is None or number <= 0:
        raise InvalidInput(
            "amount: must be a whole number of tokens greater than 0", field="amount"
        )
    return number


Change = Callable[[AsyncSession, Actor], Awaitable[object]]


async def _change(
    request: Request,
    token: str,
    user_id: str | None,
    change: Change,
    *,
    done: str,
    amount: str = "",
    reason: str = "",
) -> Response:
    """Run ``change`` as the link's holder: the signature is checked before the write
    transaction begins, so a forged link never waits for (or holds) the writer."""
    try:
        claim = read_link(settings_of(request), token)
    except LinkRefused as refused:
        return _refused_page(request, refused)
    async with database_of(request).transaction() as session:
        try:
            actor, _ = await _holder(request, session, token, claim)
            _check_person(actor, user_id)
        except LinkRefused as refused:
            return _refused_page(request, refused)
        try:
            # A savepoint: a refused change leaves the session usable to show the page.
            async with session.begin_nested():
                await change(session, actor)
        except AppError as exc:
            return await _page(
                request,
                session,
                token=token,
                actor=actor,
                claim=claim,
                status_code=exc.status_code,
                error=exc.message,
                error_field=exc.field,
                amount=amount[:40],
                reason=reason[: MAX_TEXT * 2],
            )
    return _private(RedirectResponse(f"/ask/{token}?done={done}", status_code=303))


@router.post("/ask/{token}/request")
async def ask_submit(
    request: Request,
    token: str,
    amount: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
    user_id: Annotated[str | None, Form()] = None,
) -> Response:
    """Ask for more tokens with the chat app's rules (one pending request, the
    organization's largest request, the reason's length)."""

    async def submit(session: AsyncSession, actor: Actor) -> object:
        return await decisions.submit(
            session, actor=actor, amount=_amount(amount), reason=reason or None, via=CHANNEL
        )

    return await _change(request, token, user_id, submit, done="sent", amount=amount, reason=reason)


@router.post("/ask/{token}/cancel")
async def ask_cancel(
    request: Request,
    token: str,
    request_id: Annotated[str, Form()] = "",
    user_id: Annotated[str | None, Form()] = None,
) -> Response:
    """Withdraw the pending request the page showed (by its id: one decided meanwhile
    is reported, not another request cancelled in its place)."""

    async def cancel(session: AsyncSession, actor: Actor) -> object:
        wanted = parse_id(request_id)
        if wanted is None:
            raise InvalidInput("request_id: must be a token request's id", field="request_id")
        return await decisions.cancel(session, actor=actor, request_id=wanted, via=CHANNEL)

    return await _change(request, token, user_id, cancel, done="cancelled")


@router.get("/ask/{token}/events")
async def ask_events(request: Request, session: ReadSession, token: str) -> Response:
    """The page's live stream: the link holder's balance and request events, as ``/events``
    sends a member, ending when the link expires or the account is deactivated."""
    try:
        actor, claim = await _holder(request, session, token)
    except LinkRefused as refused:
        return _private(
            Response(refused.message, status_code=refused.status_code, media_type="text/plain")
        )
    refusal = too_many_streams(request, actor.user_id)
    if refusal is not None:
        return _private(refusal)

    async def snapshot_of(reading: AsyncSession) -> dict[str, Any]:
        data = await snapshot(reading, actor=actor)
        own = await token_requests.own_pending(reading, actor=actor)
        data["pending"] = None if own is None else {"id": own.id, "amount": own.amount}
        return data

    first = await snapshot_of(session)
    database = database_of(request)

    async def still_allowed() -> bool:
        async with database.transaction(write=False) as reading:
            try:
                return await link_holder(reading, claim) == actor
            except LinkRefused:
                return False

    return live_stream(
        request,
        actor=actor,
        first=first,
        snapshot_of=snapshot_of,
        still_allowed=still_allowed,
        ends_at=claim.expires_at,
        headers=PRIVATE_HEADERS,
    )
