"""What a notification says: one :class:`Message` per delivery, built from the rows it
names when it is delivered (a request and its decision never change once written),
then written out as an email (``email.py``) or a webhook body (``webhooks.py``)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from tokendesk.config import Settings
from tokendesk.notifications.models import Kind
from tokendesk.token_requests.links import request_link


@dataclass(frozen=True)
class RequestFacts:
    id: int
    status: str
    amount: int
    approved_amount: int | None
    reason: str | None
    note: str | None
    requester_id: int
    requester_name: str
    requester_email: str
    # The requester asks through a chat app's integration: they have no tokendesk
    # page of their own but the signed request page.
    requester_from_chat_app: bool
    decider_name: str | None
    team_name: str | None
    created_at: datetime


@dataclass(frozen=True)
class Delivery:
    """One claimed notification, with everything its delivery needs."""

    id: int
    kind: str
    channel: str
    organization_id: int
    organization_name: str
    created_at: datetime
    attempts: int
    details: dict[str, Any] | None
    to_user_id: int | None = None
    to_email: str | None = None
    to_name: str | None = None
    webhook_id: int | None = None
    webhook_url: str | None = None
    webhook_format: str | None = None
    webhook_secret: str | None = None
    request: RequestFacts | None = None


@dataclass(frozen=True)
class Message:
    event: str
    subject: str
    # Paragraphs of plain text, then label/value facts, then the link.
    lines: list[str]
    facts: list[tuple[str, str]] = field(default_factory=list)
    link: str | None = None
    link_label: str = "Open in tokendesk"
    # The event's data for the generic JSON format.
    data: dict[str, Any] = field(default_factory=dict)


def idempotency_key(settings: Settings, notification_id: int) -> str:
    """The same for every delivery of one notification, and unguessable across
    installations: receivers drop a repeat by it (the email's Message-ID, a header)."""
    digest = hmac.new(
        settings.secret_key.encode(), f"notification:{notification_id}".encode(), hashlib.sha256
    ).hexdigest()[:16]
    return f"ntf-{notification_id}-{digest}"


def tokens(amount: int | None) -> str:
    return "—" if amount is None else f"{amount:,} tokens"


def when(iso: Any) -> str:
    """A timestamp kept in a notification's details (ISO 8601), as a reader wants it."""
    if not isinstance(iso, str):
        return "—"
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return iso


def admin_link(settings: Settings, request: RequestFacts) -> str:
    status = "pending" if request.status == "pending" else "all"
    return f"{settings.site_url}/admin/requests?status={status}&q={quote(request.requester_email)}"


def requester_link(settings: Settings, request: RequestFacts, *, now: datetime) -> str:
    if request.requester_from_chat_app:
        return request_link(settings, user_id=request.requester_id, now=now, base=settings.site_url)
    return f"{settings.site_url}/chat"


def _request_data(request: RequestFacts) -> dict[str, Any]:
    return {
        "id": request.id,
        "status": request.status,
        "amount": request.amount,
        "approved_amount": request.approved_amount,
        "reason": request.reason,
        "decision_note": request.note,
        "decided_by": request.decider_name,
        "requester": {"name": request.requester_name, "email": request.requester_email},
        "team": request.team_name,
        "created_at": request.created_at.isoformat(),
    }


def compose(delivery: Delivery, settings: Settings, *, now: datetime) -> Message:
    request = delivery.request
    org = delivery.organization_name
    if delivery.kind == Kind.REQUEST_CREATED and request is not None:
        who = f"{request.requester_name} <{request.requester_email}>"
        facts = [("From", who), ("Amount", tokens(request.amount))]
        if request.team_name:
            facts.append(("Team", request.team_name))
        facts.append(("Reason", request.reason or "—"))
        return Message(
            event=delivery.kind,
            subject=f"{request.requester_name} asks for {tokens(request.amount)}",
            lines=[f"{request.requester_name} asked for more tokens in {org}."],
            facts=facts,
            link=admin_link(settings, request),
            link_label="Review the request",
            data={"request": _request_data(request)},
        )
    if delivery.kind == Kind.REQUEST_DECIDED and request is not None:
        approved = request.status == "approved"
        granted = request.approved_amount if approved else None
        facts = [("Requested", tokens(request.amount))]
        if approved:
            facts.append(("Granted", tokens(granted)))
        facts.append(("Decided by", request.decider_name or "—"))
        facts.append(("Note", request.note or "—"))
        if delivery.channel == "email":
            subject = (
                f"Your request was approved: {tokens(granted)}"
                if approved
                else f"Your request for {tokens(request.amount)} was rejected"
            )
            lines = [
                f"Your request for {tokens(request.amount)} was {request.status}"
                + (f": {tokens(granted)} were added to your balance." if approved else ".")
            ]
            link = requester_link(settings, request, now=now)
            label = "See your balance"
        else:
            subject = (
                f"{request.requester_name}'s request for {tokens(request.amount)} "
                f"was {request.status}"
            )
            lines = [subject + "."]
            link, label = admin_link(settings, request), "Open the request"
        return Message(
            event=delivery.kind,
            subject=subject,
            lines=lines,
            facts=facts,
            link=link,
            link_label=label,
            data={"request": _request_data(request)},
        )
    details = delivery.details or {}
    if delivery.kind == Kind.BALANCE_THRESHOLD:
        percent = int(details.get("percent", 0))
        return Message(
            event=delivery.kind,
            subject=f"You have used {percent}% of your tokens",
            lines=[
                f"You have used {percent}% of this period's tokens in {org}: "
                f"{tokens(details.get('remaining'))} left until {when(details.get('resets_at'))}.",
                "You can ask for more tokens from the chat app.",
            ],
            facts=[("Used", tokens(details.get("used"))), ("Of", tokens(details.get("given")))],
            link=f"{settings.site_url}/chat",
            link_label="Open the chat app",
            data={"threshold": details},
        )
    if delivery.kind == Kind.BALANCE_RUNOUT:
        return Message(
            event=delivery.kind,
            subject="At your pace you will run out of tokens before the reset",
            lines=[
                f"At this period's pace ({tokens(details.get('per_day'))} a day) your tokens "
                f"in {org} run out around {when(details.get('runs_out_at'))}, before they "
                f"reset on {when(details.get('resets_at'))}.",
                "You can ask for more tokens from the chat app.",
            ],
            facts=[
                ("Used", tokens(details.get("used"))),
                ("Left", tokens(details.get("remaining"))),
            ],
            link=f"{settings.site_url}/chat",
            link_label="Open the chat app",
            data={"forecast": details},
        )
    if delivery.kind == Kind.DIGEST:
        count = int(details.get("count", 0))
        listed = details.get("requests") or []
        more = count - len(listed)
        lines = [f"{count} token request{'' if count == 1 else 's'} in {org} wait for you."]
        if more > 0:
            lines.append(f"The oldest {len(listed)} are listed; {more} more are in the queue.")
        return Message(
            event=delivery.kind,
            subject=f"{count} token request{'' if count == 1 else 's'} waiting for you",
            lines=lines,
            facts=[
                (
                    str(r.get("requester", "—")),
                    f"{tokens(r.get('amount'))}, asked {when(r.get('created_at'))}",
                )
                for r in listed
            ],
            link=f"{settings.site_url}/admin/requests?status=pending",
            link_label="Open the queue",
            data={"digest": details},
        )
    if delivery.kind == Kind.POOL_THRESHOLD:
        percent = int(details.get("percent", 0))
        return Message(
            event=delivery.kind,
            subject=f"{org} has handed out {percent}% of its token pool",
            lines=[
                f"{org} has handed out {percent}% of this period's pool: "
                f"{tokens(details.get('left'))} left for further requests."
            ],
            facts=[
                ("Handed out", tokens(details.get("used"))),
                ("Pool", tokens(details.get("pool"))),
            ],
            link=f"{settings.site_url}/admin/settings",
            link_label="Open the settings",
            data={"pool": details},
        )
    return Message(
        event=Kind.TEST.value,
        subject="tokendesk test notification",
        lines=[f"This is a test from tokendesk for {org}: this channel works."],
        link=f"{settings.site_url}/admin/settings",
        link_label="Open the settings",
        data={},
    )
