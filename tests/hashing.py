"""Cheap argon2 for the tests, and the one way a test puts a hasher of its own in place."""

from __future__ import annotations

from typing import TypeVar

import pytest
from argon2 import PasswordHasher

from tokendesk.accounts import security

H = TypeVar("H", bound=PasswordHasher)


class CheapHasher(PasswordHasher):
    """argon2 at its cheapest: tests create many users, and production-strength
    parameters would only slow them down."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)


def use_hasher(monkeypatch: pytest.MonkeyPatch, hasher: H) -> H:
    """Passwords are hashed and checked with ``hasher`` until the test ends."""
    monkeypatch.setattr(security, "_hasher", hasher)
    return hasher
