"""A month of Acme's usage and requests, recorded through the real services.

March 2030 is the current period (Acme keeps UTC and resets on the 1st); "now"
is 20 March, noon. The figures every test expects are spelled out in ``Usage``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pytest

from tests.analytics.support import actor_of, at, record, spend
from tests.factories import World
from tests.web_admin.conftest import login  # noqa: F401  (the admin center's browser sessions)
from tokendesk.db import Database
from tokendesk.token_requests import decisions

NOW = at(3, 20)


@dataclass(frozen=True)
class Usage:
    now: datetime
    # The current period, by user handle: what the rollups must add up to.
    current: dict[str, int]
    previous: dict[str, int]
    last_7_days: dict[str, int]


async def record_month(database: Database, world: World) -> Usage:
    """Usage in two batches, the second with earlier days (out of order), plus requests."""
    acme = world.org_id
    await record(
        database,
        acme,
        spend("a3", world.alice, 300, at(3, 18)),
        spend("m1", world.amy, 2000, at(3, 19)),
        spend("n1", world.nora, 4700, at(3, 19, 8)),
        spend("o1", world.owner, 100, at(3, 10), model="claude"),
        now=NOW,
    )
    await record(
        database,
        acme,
        spend("a1", world.alice, 1000, at(3, 2)),
        spend("a2", world.alice, 500, at(3, 5), model="claude"),
        spend("b1", world.bob, 3000, at(3, 5)),
        # Reported late, in March, for February: charged now, counted on its own day.
        spend("b0", world.bob, 400, at(2, 20), model="claude"),
        now=NOW,
    )
    await record(database, world.other_org_id, spend("x1", world.oscar, 9999, at(3, 10)), now=NOW)

    admin = await actor_of(database, world.admin)
    alice = await actor_of(database, world.alice)
    bob = await actor_of(database, world.bob)
    amy = await actor_of(database, world.amy)
    async with database.transaction() as s:
        first = await decisions.submit(s, actor=alice, amount=10_000, now=at(3, 3, 10))
        await decisions.approve(s, actor=admin, request_id=first.id, amount=8_000, now=at(3, 3, 12))
        second = await decisions.submit(s, actor=alice, amount=2_000, now=at(3, 15, 6))
        await decisions.approve(s, actor=admin, request_id=second.id, now=at(3, 15, 12))
        third = await decisions.submit(s, actor=bob, amount=5_000, now=at(3, 6, 9))
        await decisions.reject(s, actor=admin, request_id=third.id, now=at(3, 6, 9, 30))
        await decisions.submit(s, actor=amy, amount=20_000, now=at(3, 19, 9))
    return Usage(
        now=NOW,
        current={"nora": 4700, "bob": 3000, "amy": 2000, "alice": 1800, "owner": 100},
        previous={"bob": 400},
        last_7_days={"nora": 4700, "amy": 2000, "alice": 300},
    )


@pytest.fixture
async def usage(database: Database, world: World) -> Usage:
    return await record_month(database, world)
