"""Password hashing (argon2) and API key generation."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import secrets
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import BindParameter, ColumnElement

from tokendesk.accounts.models import ApiKey, User

_hasher = PasswordHasher()

T = TypeVar("T")

API_KEY_PREFIX = "td_"
# argon2 holds a core and its memory for the whole hash: run it beside the event loop,
# never on it, and at most this many at once, so a burst of logins queues for the
# hasher instead of starving every other request. The pool serves any event loop
# (tests start many), which an asyncio.Semaphore would not.
HASHING_THREADS = 2
_hashing = ThreadPoolExecutor(max_workers=HASHING_THREADS, thread_name_prefix="password-hash")


async def _off_loop(work: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(_hashing, work)


def _hash_now(password: str) -> str:
    return _hasher.hash(password)


@functools.lru_cache(maxsize=1)
def _dummy_hash(hasher: PasswordHasher) -> str:
    """What an unknown email is checked against, made once for the hasher in use."""
    return hasher.hash(secrets.token_urlsafe(16))


def _verify_now(password_hash: str | None, password: str) -> bool:
    if not password_hash:
        # Somebody without a password (or an unknown email) costs as much as a wrong
        # password, so the answer's timing tells nobody which emails exist.
        with contextlib.suppress(VerificationError, InvalidHashError):
            _hasher.verify(_dummy_hash(_hasher), password)
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


async def hash_password(password: str) -> str:
    return await _off_loop(lambda: _hash_now(password))


async def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches; ``None`` (no such user, no password) never does, in
    the time a wrong password takes."""
    return await _off_loop(lambda: _verify_now(password_hash, password))


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def usable_key(
    key_hash: str | BindParameter[str] | Collection[str],
) -> tuple[ColumnElement[bool], ...]:
    """Conditions for a key that may be used: this hash (or one of these, or the one
    bound later), not revoked, its owner active.

    For a query that joins ``ApiKey`` to ``User``; the REST path and the gateway's
    cache both look keys up through it, so they can never disagree on who is let in.
    """
    return (
        ApiKey.key_hash == key_hash
        if isinstance(key_hash, str | BindParameter)
        else ApiKey.key_hash.in_(key_hash),
        ApiKey.revoked_at.is_(None),
        User.is_active.is_(True),
    )
