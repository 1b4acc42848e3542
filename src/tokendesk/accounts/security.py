"""Password hashing (argon2) and API key generation."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Collection

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import BindParameter, ColumnElement

from tokendesk.accounts.models import ApiKey, User

_hasher = PasswordHasher()

API_KEY_PREFIX = "td_"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    if not password_hash:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


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
