"""Webhook bodies (generic JSON, Slack incoming webhooks, Microsoft Teams Adaptive
Cards), their signature, and posting them.

Every post carries::

    Tokendesk-Timestamp: <unix seconds>
    Tokendesk-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<body>" under the secret>
    Tokendesk-Idempotency-Key: <the same for every delivery of one notification>

so a receiver recomputes the signature, refuses a timestamp too far from its clock
(a replay) and drops a key it has seen (a redelivery).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from tokendesk.notifications.messages import Message
from tokendesk.notifications.models import WebhookFormat

SIGNATURE_HEADER = "Tokendesk-Signature"
TIMESTAMP_HEADER = "Tokendesk-Timestamp"
IDEMPOTENCY_HEADER = "Tokendesk-Idempotency-Key"
EVENT_HEADER = "Tokendesk-Event"
MAX_URL = 2000
SECRET_PREFIX = "whsec_"
# What a failed post's reply says, kept for the delivery view.
MAX_ERROR_BODY = 200


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def check_url(url: object) -> str:
    """An http(s) address with a host, at most ``MAX_URL`` characters; ValueError says why."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError("must be an http:// or https:// address")
    url = url.strip()
    if len(url) > MAX_URL:
        raise ValueError(f"must be at most {MAX_URL} characters")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("is not a valid address") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// address with a host")
    if port == 0:
        raise ValueError("is not a valid address")
    return url


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + digest.hexdigest()


def verify(secret: str, *, timestamp: str, signature: str, body: bytes) -> bool:
    """The receiver's check (documented in the README; the tests' receiver uses it)."""
    try:
        expected = sign(secret, int(timestamp), body)
    except ValueError:
        return False
    return hmac.compare_digest(expected, signature)


def _markdown(message: Message) -> str:
    lines = [f"*{message.subject}*", *message.lines[1:]]
    lines += [f"*{label}:* {value}" for label, value in message.facts]
    if message.link:
        lines.append(f"<{message.link}|{message.link_label}>")
    return "\n".join(lines)


def _slack(message: Message) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": _markdown(message)[:3000]}}
    ]
    if message.link:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": message.link_label},
                        "url": message.link,
                    }
                ],
            }
        )
    return {"text": message.subject, "blocks": blocks}


def _teams(message: Message) -> dict[str, Any]:
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": message.subject, "weight": "Bolder", "wrap": True},
        *({"type": "TextBlock", "text": line, "wrap": True} for line in message.lines[1:]),
    ]
    if message.facts:
        body.append(
            {
                "type": "FactSet",
                "facts": [{"title": label, "value": value} for label, value in message.facts],
            }
        )
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    }
    if message.link:
        card["actions"] = [
            {"type": "Action.OpenUrl", "title": message.link_label, "url": message.link}
        ]
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "content": card}
        ],
    }


def body_of(
    message: Message, *, format: str, key: str, organization: str, created_at: str
) -> bytes:
    if format == WebhookFormat.SLACK:
        payload = _slack(message)
    elif format == WebhookFormat.TEAMS:
        payload = _teams(message)
    else:
        payload = {
            "id": key,
            "event": message.event,
            "created_at": created_at,
            "organization": organization,
            "subject": message.subject,
            "text": " ".join(message.lines),
            "link": message.link,
            **message.data,
        }
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def headers_for(
    *, secret: str, key: str, event: str, body: bytes, timestamp: int
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "tokendesk-webhooks",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        IDEMPOTENCY_HEADER: key,
        EVENT_HEADER: event,
    }


async def post(
    client: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> str | None:
    """None when the receiver took it (any 2xx), else why not. A redirect is not
    followed: the address an admin entered is the only one posted to."""
    try:
        async with client.post(url, data=body, headers=headers, allow_redirects=False) as response:
            if 200 <= response.status < 300:
                return None
            text = (await response.content.read(MAX_ERROR_BODY)).decode("utf-8", "replace")
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        said = str(exc)
        return (f"{type(exc).__name__}: {said}" if said else type(exc).__name__)[:500]
    text = text.strip()
    return f"HTTP {response.status}" + (f": {text}" if text else "")
