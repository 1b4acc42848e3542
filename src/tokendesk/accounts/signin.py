"""Signing in to the web app and out of it: the password check, the sign-in limiter
and the browser sessions the cookies name.

The password is checked outside any transaction: argon2 runs in a thread pool, and
no lock or pooled connection may wait on it. The session opens after, in a short
write transaction of its own.
"""

from __future__ import annotations

from typing import Protocol

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.actor import Actor
from tokendesk.accounts.auth import end_every_session, end_login_session, open_login_session
from tokendesk.accounts.emails import email_key
from tokendesk.accounts.models import Organization, Role, User
from tokendesk.accounts.schemas import MAX_PASSWORD
from tokendesk.accounts.security import verify_password
from tokendesk.audit import service as audit
from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.errors import Forbidden, TooManyAttempts, Unauthorized
from tokendesk.events.bus import access_changed

# Who still signs in with a password where the organization turned passwords off: the
# admins who must get in when the identity provider is down or misconfigured.
BREAK_GLASS_ROLES = frozenset({Role.ORG_ADMIN.value, Role.SUPER_ADMIN.value})


class PasswordsOff(Forbidden):
    """The right password, in an organization whose people sign in through its
    identity provider only."""


class Guesses(Protocol):
    """Counts wrong guesses at a password per (email, client address) and says how
    long the next try must wait (the sign-in limiter)."""

    def attempt(self, email: str, address: str) -> float: ...
    def failed(self, email: str, address: str) -> None: ...
    def succeeded(self, email: str, address: str) -> None: ...


async def sign_in(
    database: Database,
    *,
    settings: Settings,
    email: str,
    password: str,
    guesses: Guesses,
    address: str,
) -> str | None:
    """Check the password of the active user ``email`` (lower case) and open a browser
    session: the value of its cookie, signed with ``settings``' secret. None when the
    account was deactivated between the check and the session.

    Raises TooManyAttempts while the limiter makes this email and address wait, and
    Unauthorized for a wrong email or password: nobody by that email still costs a
    (stand-in) verification, so the answer takes as long as for a wrong password.
    PasswordsOff, only once the password is right, where the organization turned
    passwords off for everyone but its admins.
    """
    wait = guesses.attempt(email, address)
    if wait:
        raise TooManyAttempts("too many attempts", retry_after=wait)
    async with database.transaction(write=False) as reading:
        found = (
            await reading.execute(
                select(User.id, User.password_hash, User.role, Organization.password_sign_in)
                .join(Organization, Organization.id == User.organization_id)
                .where(User.email == email_key(email), User.is_active.is_(True))
            )
        ).first()
    matched = len(password) <= MAX_PASSWORD and await verify_password(
        found.password_hash if found else None, password
    )
    if found is None or not matched:
        guesses.failed(email, address)
        raise Unauthorized("wrong email or password")
    guesses.succeeded(email, address)
    if not found.password_sign_in and found.role not in BREAK_GLASS_ROLES:
        raise PasswordsOff("this organization signs in through its identity provider")
    async with database.transaction() as session:
        user = await session.get(User, found.id)
        if user is None or not user.is_active:
            return None
        cookie = await open_login_session(session, settings=settings, user=user, via="password")
        await audit.record(
            session,
            organization_id=user.organization_id,
            actor_id=user.id,
            action="user.login",
            target_type="user",
            target_id=user.id,
        )
    return cookie


async def sign_out(session: AsyncSession, request: Request) -> None:
    """End this browser's session on the server, so its cookie is refused even if kept."""
    ended = await end_login_session(session, request)
    if ended is not None:
        # This browser's open event stream checks its cookie again and ends.
        access_changed(session, ended)


async def sign_out_everywhere(session: AsyncSession, *, actor: Actor) -> int:
    """End every browser session of the caller, this one included; how many."""
    ended = await end_every_session(session, user_id=actor.user_id)
    # Every open event stream of the member checks its cookie again, and ends.
    access_changed(session, actor.user_id)
    await audit.record(
        session,
        organization_id=actor.home_organization_id,
        actor_id=actor.user_id,
        action="user.signed_out_everywhere",
        target_type="user",
        target_id=actor.user_id,
        details={"sessions": ended},
    )
    return ended
