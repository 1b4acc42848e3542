"""Password changes: the checks and the hashing that run before the write transaction,
and the conditional write that follows.

argon2 is slow and no lock may wait on it, so a new password is checked and hashed
first (:class:`NewPassword`), then written only while the hash it replaces is stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.actor import Actor
from tokendesk.accounts.models import User
from tokendesk.accounts.schemas import UserUpdate
from tokendesk.accounts.security import verify_password
from tokendesk.accounts.signin import Guesses
from tokendesk.errors import Conflict, Forbidden, InvalidInput, TooManyAttempts


@dataclass(frozen=True)
class NewPassword:
    """A password change worked out before the write transaction opens, since argon2
    is slow and no lock may wait on it. ``replaces``: for your own change, the stored
    hash the current password matched; it is written only while that is still stored."""

    user_id: int
    password_hash: str
    replaces: str | None


async def check_own_password_change(
    actor: Actor, user: User, data: UserUpdate, *, guesses: Guesses, address: str
) -> None:
    """Your own password changes only with the current one, from a browser session:
    an API key handed to some client must never be enough to take the account over.
    Wrong current passwords slow the next try like wrong sign-ins, so a stolen
    session cookie is no faster a way to guess the password than the sign-in form."""
    if actor.session_id is None:
        raise Forbidden(
            "password: changing your own password needs a signed-in browser session, "
            "not an API key",
            field="password",
        )
    if not data.current_password:
        raise InvalidInput(
            "current_password: required to change your own password", field="current_password"
        )
    email = user.email.lower()
    wait = guesses.attempt(email, address)
    if wait:
        raise TooManyAttempts(
            f"current_password: too many wrong attempts; try again in {math.ceil(wait)} s",
            retry_after=wait,
            field="current_password",
        )
    if not await verify_password(user.password_hash, data.current_password):
        guesses.failed(email, address)
        raise Forbidden("current_password: does not match your password", field="current_password")
    guesses.succeeded(email, address)


async def write_password(session: AsyncSession, *, user: User, new: NewPassword) -> None:
    query = update(User).where(User.id == user.id).values(password_hash=new.password_hash)
    if new.replaces is not None:
        query = query.where(User.password_hash == new.replaces)
    result = await session.execute(query)
    if not getattr(result, "rowcount", 0):
        raise Conflict(
            "current_password: your password was changed meanwhile; sign in with the new one",
            field="current_password",
        )
