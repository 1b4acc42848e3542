"""Email over SMTP: a plain-text part and a simple HTML part, a Message-ID derived from
the notification (:func:`messages.idempotency_key`), so a mail server or client drops a
repeat of a delivery the worker could not record."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from email.header import Header
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr, formatdate
from html import escape

import aiosmtplib

from tokendesk.config import Settings
from tokendesk.notifications.messages import Message, idempotency_key

# An SMTP error's text goes into the delivery view: enough to say why, bounded.
MAX_ERROR = 500


def message_id(settings: Settings, notification_id: int) -> str:
    domain = settings.smtp_from.rpartition("@")[2] or "tokendesk.local"
    return f"<{idempotency_key(settings, notification_id)}@{domain}>"


def _html(message: Message) -> str:
    paragraphs = "".join(f"<p>{escape(line)}</p>" for line in message.lines)
    rows = "".join(
        f'<tr><th align="left" style="padding:2px 12px 2px 0;color:#555">{escape(label)}</th>'
        f"<td>{escape(value)}</td></tr>"
        for label, value in message.facts
    )
    table = f'<table cellspacing="0" style="margin:12px 0">{rows}</table>' if rows else ""
    link = ""
    if message.link:
        link = (
            f'<p><a href="{escape(message.link)}" style="display:inline-block;padding:8px 14px;'
            f'background:#2563eb;color:#fff;text-decoration:none;border-radius:6px">'
            f"{escape(message.link_label)}</a></p>"
        )
    return (
        '<!doctype html><html><body style="font-family:system-ui,sans-serif;font-size:14px;'
        f'color:#111">{paragraphs}{table}{link}</body></html>'
    )


def _text(message: Message) -> str:
    parts = ["\n\n".join(message.lines)]
    if message.facts:
        parts.append("\n".join(f"{label}: {value}" for label, value in message.facts))
    if message.link:
        parts.append(f"{message.link_label}: {message.link}")
    return "\n\n".join(parts) + "\n"


def build(
    settings: Settings, *, notification_id: int, to_email: str, to_name: str, message: Message
) -> MIMEMultipart:
    """The mail, built with the email package's compat32 classes: the modern
    ``EmailMessage`` parses every header it is given again, which is most of what a
    notification costs to send, and these headers are tokendesk's own."""
    mail = MIMEMultipart("alternative")
    mail["From"] = settings.smtp_from
    mail["To"] = formataddr((to_name, to_email))
    # A Header, which compat32 folds (into encoded words beyond ASCII); a str it would
    # fold whole onto a line of its own.
    charset = "us-ascii" if message.subject.isascii() else "utf-8"
    subject = Header(message.subject, charset, header_name="Subject")
    mail["Subject"] = subject  # type: ignore[assignment]
    mail["Date"] = formatdate(localtime=False, usegmt=True)
    mail["Message-ID"] = message_id(settings, notification_id)
    # Automated mail: out-of-office replies are not wanted back.
    mail["Auto-Submitted"] = "auto-generated"
    mail["X-Tokendesk-Event"] = message.event
    mail.attach(MIMEText(_text(message), "plain", "utf-8"))
    mail.attach(MIMEText(_html(message), "html", "utf-8"))
    return mail


def _client(settings: Settings) -> aiosmtplib.SMTP:
    assert settings.smtp_host is not None
    return aiosmtplib.SMTP(
        hostname=settings.smtp_host,
        port=settings.smtp_port,
        use_tls=settings.smtp_security == "tls",
        start_tls=settings.smtp_security == "starttls",
        username=settings.smtp_username,
        password=settings.smtp_password,
        timeout=settings.smtp_timeout_seconds,
    )


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR]


async def _send_share(
    settings: Settings, mails: Sequence[tuple[int, MIMEMultipart]], outcome: dict[int, str | None]
) -> None:
    """Send ``mails`` one after the other over one connection, reconnecting after a
    failure; each mail's outcome is None (accepted) or why not."""
    client: aiosmtplib.SMTP | None = None
    try:
        for notification_id, mail in mails:
            try:
                if client is None or not client.is_connected:
                    client = _client(settings)
                    await client.connect()
                await client.send_message(mail)
                outcome[notification_id] = None
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                outcome[notification_id] = _error(exc)
                if isinstance(exc, aiosmtplib.SMTPServerDisconnected | OSError | TimeoutError):
                    client = None
    finally:
        if client is not None and client.is_connected:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()


async def send_all(
    settings: Settings, mails: Sequence[tuple[int, MIMEMultipart]]
) -> dict[int, str | None]:
    """Deliver ``mails`` over up to ``TOKENDESK_SMTP_CONNECTIONS`` connections at once."""
    outcome: dict[int, str | None] = {}
    if not mails:
        return outcome
    shares = min(settings.smtp_connections, len(mails))
    await asyncio.gather(
        *(_send_share(settings, mails[index::shares], outcome) for index in range(shares))
    )
    return outcome
