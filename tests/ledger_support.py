"""Reading balances in tests, one way for every domain's tests."""

from __future__ import annotations

from tests.factories import Person
from tokendesk.db import Database
from tokendesk.ledger.models import Balance


async def balance_of(database: Database, user: int | Person) -> Balance:
    """The user's cached balance row as it is in the database (nothing rolled over)."""
    user_id = user.id if isinstance(user, Person) else user
    async with database.transaction(write=False) as s:
        balance = await s.get(Balance, user_id)
        assert balance is not None
        return balance
