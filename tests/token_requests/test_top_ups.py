"""Auto top-up: a member whose usage crosses the trigger is granted a bump, as a rule's
decision, within its cooldown and ceiling; and two debits crossing at once grant once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import event, select

from tests.factories import Person, World
from tests.ledger_support import balance_of
from tests.token_requests.support import actor_for, assert_ledger_consistent
from tokendesk.accounts.models import Organization
from tokendesk.audit.models import AuditEntry
from tokendesk.db import Database
from tokendesk.metering.service import UsageInput, record_usage
from tokendesk.notifications.models import Notification
from tokendesk.token_requests import decisions, top_ups
from tokendesk.token_requests.models import TokenRequest

# Alice is in team Alpha: 50,000 a period. 80% of it is 40,000.
NOW = datetime.now(UTC)
FIGURES: dict[str, Any] = {
    "enabled": True,
    "trigger_percent": 80,
    "top_up_amount": 10_000,
    "cooldown_minutes": 60,
    "max_count": 2,
}


async def turn_on(database: Database, world: World, **changes: Any) -> None:
    admin = await actor_for(database, world.admin)
    async with database.transaction() as s:
        await top_ups.set_top_up(s, actor=admin, values={**FIGURES, **changes})


_ids = iter(range(1_000_000))


async def use(
    database: Database, world: World, person: Person, tokens: int, *, at: datetime = NOW
) -> None:
    """``tokens`` of usage by ``person`` (of Acme) recorded at ``at``, in its own transaction."""
    usage = UsageInput(
        event_id=f"e{next(_ids)}",
        user_id=person.id,
        model="gpt-4o",
        prompt_tokens=tokens,
        completion_tokens=0,
    )
    async with database.transaction() as s:
        await record_usage(s, organization_id=world.org_id, events=[usage], now=at)


async def give_pool(database: Database, world: World, tokens: int) -> None:
    async with database.transaction() as s:
        org = await s.get(Organization, world.org_id)
        assert org is not None
        org.pool = tokens


async def top_ups_of(database: Database, person: Person) -> list[TokenRequest]:
    async with database.transaction(write=False) as s:
        return list(
            await s.scalars(
                select(TokenRequest)
                .where(TokenRequest.user_id == person.id, TokenRequest.decision_kind == "rule")
                .order_by(TokenRequest.id)
            )
        )


class TestCrossing:
    async def test_crossing_the_trigger_grants_the_bump_as_the_rules_decision(
        self, database: Database, world: World
    ) -> None:
        await turn_on(database, world)
        await use(database, world, world.alice, 39_000)
        assert await top_ups_of(database, world.alice) == []
        await use(database, world, world.alice, 2_000)

        [granted] = await top_ups_of(database, world.alice)
        assert (granted.status, granted.approved_amount) == ("approved", 10_000)
        assert granted.decided_by_rule_name == "Auto top-up" and granted.decided_by_id is None
        assert granted.decision_note == "auto-approved by rule Auto top-up"
        assert (await balance_of(database, world.alice)).granted == 10_000
        async with database.transaction(write=False) as s:
            audit = await s.scalar(
                select(AuditEntry).where(
                    AuditEntry.action == "token_request.approved",
                    AuditEntry.target_id == str(granted.id),
                )
            )
            told = await s.scalar(
                select(Notification).where(Notification.token_request_id == granted.id)
            )
        assert audit is not None and audit.actor_id is None
        assert audit.details["rule"] == "Auto top-up"
        assert told is not None and told.kind == "request.decided"
        assert told.user_id == world.alice.id
        await assert_ledger_consistent(database)

    async def test_it_is_off_by_default(self, database: Database, world: World) -> None:
        await use(database, world, world.alice, 45_000)
        assert await top_ups_of(database, world.alice) == []
        admin = await actor_for(database, world.admin)
        async with database.transaction(write=False) as s:
            shown = await top_ups.get_top_up(s, actor=admin)
        assert (shown.id, shown.enabled) == (None, False)

    async def test_a_rule_turned_off_grants_nothing(self, database: Database, world: World) -> None:
        await turn_on(database, world, enabled=False)
        await use(database, world, world.alice, 45_000)
        assert await top_ups_of(database, world.alice) == []

    async def test_a_member_with_a_pending_request_is_topped_up_and_keeps_it(
        self, database: Database, world: World
    ) -> None:
        await turn_on(database, world)
        alice = await actor_for(database, world.alice)
        async with database.transaction() as s:
            pending = await decisions.submit(s, actor=alice, amount=5_000)
        await use(database, world, world.alice, 41_000)
        assert len(await top_ups_of(database, world.alice)) == 1
        async with database.transaction(write=False) as s:
            row = await s.get(TokenRequest, pending.id)
            assert row is not None and row.status == "pending"

    async def test_usage_under_the_trigger_or_already_past_it_grants_nothing(
        self, database: Database, world: World
    ) -> None:
        await turn_on(database, world, cooldown_minutes=None, max_count=10)
        await use(database, world, world.alice, 30_000)
        await use(database, world, world.alice, 9_999)
        assert await top_ups_of(database, world.alice) == []
        await use(database, world, world.alice, 1)  # exactly 80%: crossed
        assert len(await top_ups_of(database, world.alice)) == 1
        # 40,000 of 60,000 now; under 80% (48,000) again, so no top-up yet.
        await use(database, world, world.alice, 7_000)
        assert len(await top_ups_of(database, world.alice)) == 1


class TestCooldownAndCeiling:
    async def test_a_crossing_in_the_cooldown_grants_nothing(
        self, database: Database, world: World
    ) -> None:
        await turn_on(database, world)
        await use(database, world, world.alice, 41_000)
        # 41,000 of 60,000: 48,000 is the next crossing, 10 minutes later.
        await use(database, world, world.alice, 8_000, at=NOW + timedelta(minutes=10))
        assert len(await top_ups_of(database, world.alice)) == 1

    async def test_after_the_cooldown_the_next_crossing_tops_up_again(
        self, database: Database, world: World
    ) -> None:
        await turn_on(database, world)
        await use(database, world, world.alice, 41_000)
        await use(database, world, world.alice, 8_000, at=NOW + timedelta(minutes=61))
        assert [r.approved_amount for r in await top_ups_of(database, world.alice)] == [
            10_000,
            10_000,
        ]

    async def test_the_ceiling_per_period_holds(self, database: Database, world: World) -> None:
        await turn_on(database, world, cooldown_minutes=0, max_count=None, max_tokens=20_000)
        # Each crossing raises what she has by 10,000, and the next one is 8,000 later.
        for step, tokens in enumerate([41_000, 8_000, 8_000, 8_000]):
            await use(database, world, world.alice, tokens, at=NOW + timedelta(seconds=step))
        assert len(await top_ups_of(database, world.alice)) == 2
        assert (await balance_of(database, world.alice)).granted == 20_000
        await assert_ledger_consistent(database)

    async def test_the_pool_floor_holds(self, database: Database, world: World) -> None:
        await give_pool(database, world, 10_000_000)
        await turn_on(database, world, pool_floor=10_000_000)
        await use(database, world, world.alice, 41_000)
        assert await top_ups_of(database, world.alice) == []

    async def test_a_pool_with_room_is_checked_and_grants(
        self, database: Database, world: World
    ) -> None:
        await give_pool(database, world, 10_000_000)
        await turn_on(database, world, pool_floor=1_000)
        await use(database, world, world.alice, 41_000)
        assert len(await top_ups_of(database, world.alice)) == 1


@contextmanager
def statements(database: Database) -> Iterator[list[str]]:
    seen: list[str] = []
    engine = database.write_engine.sync_engine

    def count(*args: Any) -> None:
        seen.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


class TestHotPath:
    async def test_a_debit_that_crosses_nothing_costs_no_query_more(
        self, database: Database, world: World
    ) -> None:
        await use(database, world, world.alice, 1_000)
        with statements(database) as without:
            await use(database, world, world.alice, 1_000)
        await turn_on(database, world)
        with statements(database) as with_rule:
            await use(database, world, world.alice, 1_000)
        assert len(with_rule) == len(without)


class TestSettings:
    async def test_a_bad_figure_is_named_and_nothing_saved(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        bad = {**FIGURES, "trigger_percent": 0}
        r = await client.put("/api/v1/approval-rules/top-up", json=bad, headers=world.admin.headers)
        assert r.status_code == 422 and "trigger_percent" in r.text
        no_ceiling = {**FIGURES, "max_count": None}
        r = await client.put(
            "/api/v1/approval-rules/top-up", json=no_ceiling, headers=world.admin.headers
        )
        assert r.status_code == 422 and "max_count" in r.text
        r = await client.get("/api/v1/approval-rules/top-up", headers=world.admin.headers)
        assert r.json()["id"] is None

    async def test_an_admin_saves_it_and_the_rule_lists_leave_it_out(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        r = await client.put(
            "/api/v1/approval-rules/top-up", json=FIGURES, headers=world.admin.headers
        )
        assert r.status_code == 200, r.text
        assert r.json()["enabled"] is True and r.json()["top_up_amount"] == 10_000
        listed = await client.get("/api/v1/approval-rules", headers=world.admin.headers)
        assert listed.json()["items"] == []
        rule_id = r.json()["id"]
        hidden = await client.get(f"/api/v1/approval-rules/{rule_id}", headers=world.admin.headers)
        assert hidden.status_code == 404

    async def test_a_member_may_not_see_it(self, client: httpx.AsyncClient, world: World) -> None:
        r = await client.get("/api/v1/approval-rules/top-up", headers=world.alice.headers)
        assert r.status_code == 403

    async def test_a_team_owner_may_not_change_it(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        r = await client.put(
            "/api/v1/approval-rules/top-up", json=FIGURES, headers=world.owner.headers
        )
        assert r.status_code == 403


class TestConcurrency:
    async def test_two_debits_crossing_at_once_top_up_once(
        self, database: Database, world: World, postgres_only: None
    ) -> None:
        await turn_on(database, world, cooldown_minutes=0, max_count=5)
        await use(database, world, world.alice, 39_000)
        # Either alone crosses 40,000; together, the second sees the first's top-up.
        await asyncio.gather(
            use(database, world, world.alice, 2_000), use(database, world, world.alice, 2_000)
        )
        assert len(await top_ups_of(database, world.alice)) == 1
        await assert_ledger_consistent(database)

    async def test_the_ceiling_holds_under_concurrent_debits(
        self, database: Database, world: World, postgres_only: None
    ) -> None:
        await turn_on(database, world, cooldown_minutes=0, max_count=2)
        # Each 9,000 crosses the next 80% line once the one before was topped up.
        await asyncio.gather(*(use(database, world, world.alice, 9_000) for _ in range(10)))
        granted = await top_ups_of(database, world.alice)
        assert len(granted) == 2
        assert (await balance_of(database, world.alice)).granted == 20_000
        await assert_ledger_consistent(database)
