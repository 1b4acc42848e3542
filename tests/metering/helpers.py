"""Shared helpers of the metering tests."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date
from typing import Any

from sqlalchemy import select

from tokendesk.db import Database
from tokendesk.ledger.doctor import check_balances
from tokendesk.ledger.models import EntryKind, LedgerEntry
from tokendesk.metering.models import NO_TEAM, UsageEvent, UsageTeamDaily
from tokendesk.metering.service import UsageInput


def usage(event_id: str, user_id: int, tokens: int = 100, **extra: Any) -> UsageInput:
    """An event of ``tokens`` split 3:1 between prompt and completion."""
    prompt = tokens * 3 // 4
    return UsageInput(
        event_id=event_id,
        user_id=user_id,
        model=extra.pop("model", "gpt-4o"),
        prompt_tokens=prompt,
        completion_tokens=tokens - prompt,
        **extra,
    )


async def usage_entries(database: Database, user_id: int) -> list[int]:
    async with database.transaction(write=False) as s:
        rows = await s.scalars(
            select(LedgerEntry.amount)
            .where(LedgerEntry.user_id == user_id, LedgerEntry.kind == EntryKind.USAGE.value)
            .order_by(LedgerEntry.id)
        )
        return list(rows)


async def assert_ledger_consistent(database: Database) -> None:
    async with database.transaction(write=False) as s:
        assert await check_balances(s) == []


RollupKey = tuple[date, int, str]
Sums = tuple[int, int, int, int]


async def rollups_and_raw_sums(
    database: Database,
) -> tuple[dict[RollupKey, Sums], dict[RollupKey, Sums]]:
    """(team rollup sums, the same sums computed from raw events), keyed by (day, team, model).

    Events without a team count under ``NO_TEAM``. Acme keeps UTC, so its days are UTC days.
    """
    raw: dict[RollupKey, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    async with database.transaction(write=False) as s:
        rollup = {
            (row.day, row.team_id, row.model): (
                row.prompt_tokens,
                row.completion_tokens,
                row.total_tokens,
                row.calls,
            )
            for row in await s.scalars(select(UsageTeamDaily))
        }
        for event in await s.scalars(select(UsageEvent)):
            key = (
                event.occurred_at.astimezone(UTC).date(),
                NO_TEAM if event.team_id is None else event.team_id,
                event.model,
            )
            sums = (event.prompt_tokens, event.completion_tokens, event.total_tokens, 1)
            raw[key] = [a + b for a, b in zip(raw[key], sums, strict=True)]
    return rollup, {key: (a, b, c, d) for key, (a, b, c, d) in raw.items()}
