from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from tokendesk.accounts import security


@pytest.fixture(autouse=True)
def _cheap_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every world hashes nine passwords; production-strength argon2 would dominate the run.
    monkeypatch.setattr(
        security, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )
