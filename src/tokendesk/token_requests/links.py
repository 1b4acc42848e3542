"""Personal request links: a signed, short-lived address at which one person asks for
more tokens without a tokendesk password (people who chat through another chat app
have none).

A link names its user and when it expires, signed with the server's secret under a
salt of its own, so no other value the application signs (a session cookie, a CSRF
token) can be passed off as a link, nor a link as one of them. It grants exactly
what the page at ``/ask/{token}`` offers: that person's balance, their request and
its cancellation, and the live stream of both. Who holds it acts as a member,
whatever their role, and only while their account is active.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from itsdangerous import BadData, Signer
from itsdangerous.encoding import base64_decode, base64_encode, bytes_to_int, int_to_bytes
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.actor import Actor
from tokendesk.accounts.models import Role, User
from tokendesk.bounds import parse_id
from tokendesk.config import Settings
from tokendesk.db import utcnow
from tokendesk.errors import AppError

LINK_SALT = "tokendesk-request-link"
LINK_PATH = "/ask/"
# Far longer than any token this module signs (about 55 characters): anything longer is
# refused before a signature is computed over it.
MAX_TOKEN_CHARS = 200
# An expiry is a count of seconds since 1970; eight bytes hold every one a link can have.
MAX_EXPIRY_BYTES = 8


class LinkRefused(AppError):
    """A request link that does not (or no longer) let its holder in; ``reason`` is one
    of ``invalid``, ``expired``, ``inactive`` or ``other_user``, for the page to explain."""

    def __init__(self, reason: str, message: str, *, status_code: int) -> None:
        super().__init__(message, status_code)
        self.reason = reason


@dataclass(frozen=True)
class LinkClaim:
    user_id: int
    expires_at: datetime


def _signer(settings: Settings) -> Signer:
    return Signer(settings.secret_key, salt=LINK_SALT, digest_method=hashlib.sha256)


def link_expiry(settings: Settings, *, now: datetime) -> datetime:
    """When a link signed at ``now`` expires, to the second its token carries."""
    expires = int((now + timedelta(hours=settings.request_link_hours)).timestamp())
    return datetime.fromtimestamp(expires, UTC)


def link_token(settings: Settings, *, user_id: int, now: datetime | None = None) -> str:
    """The token of :func:`request_link`: ``<user id>.<expiry>.<signature>``."""
    expires = int(link_expiry(settings, now=now or utcnow()).timestamp())
    payload = f"{user_id}.{base64_encode(int_to_bytes(expires)).decode()}"
    return _signer(settings).sign(payload).decode()


def request_link(
    settings: Settings, *, user_id: int, now: datetime | None = None, base: str = ""
) -> str:
    """The address of ``user_id``'s request page, valid for ``TOKENDESK_REQUEST_LINK_HOURS``
    from ``now``: absolute under ``TOKENDESK_PUBLIC_URL`` when it is set, else under
    ``base`` (the address the caller reached this server at; none gives a path from the
    server's root)."""
    path = LINK_PATH + link_token(settings, user_id=user_id, now=now)
    return (settings.public_url or base.rstrip("/")) + path


def read_link(settings: Settings, token: str, *, now: datetime | None = None) -> LinkClaim:
    """Whose link ``token`` is and until when; :class:`LinkRefused` when it was not signed
    by this server as a link, was changed, or has expired."""
    invalid = LinkRefused(
        "invalid", "this link is not valid: copy the whole link again", status_code=404
    )
    if len(token) > MAX_TOKEN_CHARS:
        raise invalid
    try:
        payload = _signer(settings).unsign(token).decode("ascii")
    except (BadData, UnicodeDecodeError):
        raise invalid from None
    user_text, _, expiry_text = payload.partition(".")
    user_id = parse_id(user_text)
    try:
        raw_expiry = base64_decode(expiry_text)
    except BadData:
        raise invalid from None
    if user_id is None or not 0 < len(raw_expiry) <= MAX_EXPIRY_BYTES:
        raise invalid
    # Base64's last character may carry unused bits: only the one spelling this server
    # writes is accepted, so a link has exactly one form and any altered one is refused.
    canonical = f"{user_id}.{base64_encode(raw_expiry).decode()}"
    if payload != canonical or _signer(settings).sign(canonical).decode() != token:
        raise invalid
    expires_at = datetime.fromtimestamp(bytes_to_int(raw_expiry), UTC)
    if expires_at <= (now or utcnow()):
        raise LinkRefused("expired", "this link has expired", status_code=410)
    return LinkClaim(user_id=user_id, expires_at=expires_at)


async def link_holder(session: AsyncSession, claim: LinkClaim) -> Actor:
    """The person a verified link names, as a member: an admin's link opens their own
    request page and nothing of the admin center."""
    user = await session.scalar(select(User).where(User.id == claim.user_id))
    if user is None:
        # Only a link signed for a user who never existed here (another database
        # under the same secret) can get this far.
        raise LinkRefused(
            "invalid", "this link is not valid: copy the whole link again", status_code=404
        )
    if not user.is_active:
        raise LinkRefused(
            "inactive",
            "this account is deactivated; ask your administrator",
            status_code=403,
        )
    return Actor(
        user_id=user.id,
        email=user.email,
        name=user.name,
        role=Role.MEMBER,
        organization_id=user.organization_id,
        home_organization_id=user.organization_id,
        team_id=user.team_id,
    )
