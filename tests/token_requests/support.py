"""Helpers shared by the token-request tests: actors, submissions, ledger checks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event, func, select

from tests.factories import Person, World
from tests.ledger.helpers import assert_ledger_consistent as assert_ledger_consistent
from tokendesk.accounts.actor import Actor
from tokendesk.accounts.auth import build_actor
from tokendesk.accounts.models import User
from tokendesk.accounts.users import create_user
from tokendesk.audit.models import AuditEntry
from tokendesk.db import Database
from tokendesk.ledger.models import EntryKind, LedgerEntry
from tokendesk.token_requests import decisions
from tokendesk.token_requests.schemas import TokenRequestOut


async def actor_for(
    database: Database, person: Person, *, organization_id: int | None = None
) -> Actor:
    async with database.transaction(write=False) as s:
        user = await s.get(User, person.id)
        assert user is not None
        return await build_actor(s, user, organization_id=organization_id)


async def submit(
    database: Database, person: Person, amount: int = 1_000, reason: str | None = None
) -> TokenRequestOut:
    actor = await actor_for(database, person)
    async with database.transaction() as s:
        return await decisions.submit(s, actor=actor, amount=amount, reason=reason)


async def decide(
    database: Database, person: Person, request_id: int, action: str = "approve", **kwargs: Any
) -> TokenRequestOut:
    actor = await actor_for(database, person)
    async with database.transaction() as s:
        decider = getattr(decisions, action)
        result: TokenRequestOut = await decider(s, actor=actor, request_id=request_id, **kwargs)
        return result


async def grants_for(database: Database, request_id: int) -> list[LedgerEntry]:
    async with database.transaction(write=False) as s:
        rows = await s.scalars(
            select(LedgerEntry).where(
                LedgerEntry.token_request_id == request_id,
                LedgerEntry.kind == EntryKind.GRANT.value,
            )
        )
        return list(rows)


async def audit_actions(database: Database, request_id: int) -> list[str]:
    async with database.transaction(write=False) as s:
        rows = await s.scalars(
            select(AuditEntry.action)
            .where(
                AuditEntry.target_type == "token_request",
                AuditEntry.target_id == str(request_id),
            )
            .order_by(AuditEntry.id)
        )
        return list(rows)


async def count_grants(database: Database) -> int:
    async with database.transaction(write=False) as s:
        total = await s.scalar(
            select(func.count()).where(LedgerEntry.kind == EntryKind.GRANT.value)
        )
        return int(total or 0)


@contextmanager
def counting_statements(database: Database) -> Iterator[list[str]]:
    """Every SQL statement the write engine runs inside the block."""
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    engine = database.write_engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def members(database: Database, world: World, count: int, prefix: str) -> list[Person]:
    """``count`` extra members of team Beta (no API keys)."""
    people = []
    async with database.transaction() as s:
        for i in range(count):
            user = await create_user(
                s,
                organization_id=world.org_id,
                email=f"{prefix}{i}@example.com",
                name=f"{prefix.capitalize()} {i}",
                team_id=world.team_b,
            )
            people.append(Person(user.id, user.email, user.name, key=""))
    return people
