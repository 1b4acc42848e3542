"""Helpers of the analytics tests: usage recorded through the real metering service."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from tests.factories import Person
from tokendesk.accounts.actor import Actor
from tokendesk.accounts.auth import build_actor
from tokendesk.accounts.models import User
from tokendesk.analytics import service
from tokendesk.db import Database
from tokendesk.metering import rollup_check
from tokendesk.metering.service import UsageInput, UsageResult, record_usage

T = TypeVar("T")


def at(month: int, day: int, hour: int = 12, minute: int = 0) -> datetime:
    """An instant in 2030 (UTC): far enough ahead that periods roll over as the tests move."""
    return datetime(2030, month, day, hour, minute, tzinfo=UTC)


def d(month: int, day: int) -> date:
    return date(2030, month, day)


def spend(
    event_id: str, person: Person, tokens: int, when: datetime, model: str = "gpt-4o"
) -> UsageInput:
    """``tokens`` used by ``person`` at ``when``, split 3:1 between prompt and completion."""
    prompt = tokens * 3 // 4
    return UsageInput(
        event_id=event_id,
        user_id=person.id,
        model=model,
        prompt_tokens=prompt,
        completion_tokens=tokens - prompt,
        occurred_at=when,
    )


async def record(
    database: Database, organization_id: int, *events: UsageInput, now: datetime
) -> list[UsageResult]:
    async with database.transaction() as session:
        return await record_usage(
            session, organization_id=organization_id, events=list(events), now=now
        )


async def actor_of(database: Database, person: Person) -> Actor:
    async with database.transaction(write=False) as session:
        user = await session.get(User, person.id)
        assert user is not None
        return await build_actor(session, user)


async def figure(
    database: Database,
    who: Actor,
    compute: Callable[..., Awaitable[T]],
    *,
    now: datetime,
    **query: Any,
) -> T:
    """Resolve ``query`` for ``who`` and compute one figure from it, as the routes do."""
    options = {key: query.pop(key) for key in ("limit", "stack", "series") if key in query}
    async with database.transaction(write=False) as session:
        selection = await service.selection_for(
            session, actor=who, query=service.Query(**query), now=now
        )
        return await compute(session, selection=selection, **options)


async def rollup_differences(database: Database, organization_id: int) -> list[str]:
    async with database.transaction(write=False) as session:
        return await rollup_check.differences(session, organization_id=organization_id)
