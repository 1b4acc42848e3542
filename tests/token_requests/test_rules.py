"""Auto-approve rules: each limit at its edge, the period's rollover, the order of
rules, the pool, concurrent submissions on PostgreSQL, and what the audit log, the
queue and analytics record of a rule's decision."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.factories import Person, World, make_world
from tests.ledger_support import balance_of
from tests.token_requests.support import (
    actor_for,
    assert_ledger_consistent,
    grants_for,
    members,
)
from tokendesk.audit.models import AuditEntry
from tokendesk.db import Database, utcnow
from tokendesk.errors import Conflict
from tokendesk.notifications.models import Notification
from tokendesk.token_requests import decisions, pool, rule_admin, service
from tokendesk.token_requests.models import ApprovalRule
from tokendesk.token_requests.schemas import TokenRequestOut

# Acme's allocations (see test_pool): the pool below leaves 10,000 after them.
ALLOCATED = 355_000


async def add_rule(
    database: Database, world: World, name: str = "small", **options: Any
) -> ApprovalRule:
    async with database.transaction() as s:
        return await rule_admin.add_rule(s, organization_id=world.org_id, name=name, **options)


async def ask(
    database: Database, person: Person, amount: int, *, now: datetime | None = None
) -> TokenRequestOut:
    actor = await actor_for(database, person)
    async with database.transaction() as s:
        return await decisions.submit(s, actor=actor, amount=amount, now=now)


def by_rule(out: TokenRequestOut, name: str) -> bool:
    return (
        out.status == "approved"
        and out.decision_kind == "rule"
        and out.decided_by_rule is not None
        and out.decided_by_rule.name == name
        and out.decision_note == f"auto-approved by rule {name}"
    )


class TestLimits:
    async def test_max_amount_is_inclusive(self, database: Database, world: World) -> None:
        await add_rule(database, world, max_amount=5_000)
        assert by_rule(await ask(database, world.alice, 5_000), "small")
        waiting = await ask(database, world.alice, 5_001)
        assert waiting.status == "pending" and waiting.decision_kind is None
        assert (await balance_of(database, world.alice)).granted == 5_000
        assert len(await grants_for(database, waiting.id)) == 0
        await assert_ledger_consistent(database)

    async def test_count_per_period_allows_exactly_k(
        self, database: Database, world: World
    ) -> None:
        await add_rule(database, world, max_amount=1_000, max_count=2)
        assert by_rule(await ask(database, world.alice, 10), "small")
        assert by_rule(await ask(database, world.alice, 10), "small")
        assert (await ask(database, world.alice, 10)).status == "pending"
        # Per user: another member has their own count.
        assert by_rule(await ask(database, world.amy, 10), "small")

    async def test_tokens_per_period_allow_reaching_the_cap_not_passing_it(
        self, database: Database, world: World
    ) -> None:
        await add_rule(database, world, max_tokens=1_000)
        assert by_rule(await ask(database, world.alice, 600), "small")
        assert by_rule(await ask(database, world.alice, 400), "small")  # exactly 1,000
        assert (await ask(database, world.alice, 1)).status == "pending"
        assert (await balance_of(database, world.alice)).granted == 1_000

    async def test_pool_floor_holds_at_its_edge(self, database: Database) -> None:
        world = await make_world(database, pool=ALLOCATED + 10_000)
        await add_rule(database, world, pool_floor=4_000)
        assert by_rule(await ask(database, world.alice, 6_000), "small")  # leaves exactly 4,000
        assert (await ask(database, world.amy, 1)).status == "pending"  # would leave 3,999
        async with database.transaction(write=False) as s:
            usage = await pool.pool_usage(s, organization_id=world.org_id)
        assert usage is not None and usage.left == 4_000

    async def test_the_pool_is_checked_as_a_persons_approval_is(self, database: Database) -> None:
        world = await make_world(database, pool=ALLOCATED + 500)
        await add_rule(database, world)  # no limit of its own
        assert (await ask(database, world.alice, 501)).status == "pending"
        assert by_rule(await ask(database, world.amy, 500), "small")

    async def test_the_count_starts_again_after_the_period_rolls_over(
        self, database: Database, world: World
    ) -> None:
        await add_rule(database, world, max_count=1, max_tokens=100)
        assert by_rule(await ask(database, world.alice, 100), "small")
        before = await balance_of(database, world.alice)
        assert (await ask(database, world.alice, 1)).status == "pending"
        actor = await actor_for(database, world.alice)
        async with database.transaction() as s:
            mine = await service.own_pending(s, actor=actor)
            assert mine is not None
            await decisions.cancel(s, actor=actor, request_id=mine.id)
        later = before.period_end + timedelta(minutes=1)
        assert by_rule(await ask(database, world.alice, 100, now=later), "small")
        after = await balance_of(database, world.alice)
        assert after.period_start == before.period_end and after.granted == 100
        await assert_ledger_consistent(database)


class TestOrder:
    async def test_team_rules_come_first_then_position(
        self, database: Database, world: World
    ) -> None:
        await add_rule(database, world, "org first", max_amount=1_000)
        await add_rule(database, world, "org second", max_amount=9_000)
        await add_rule(database, world, "alpha", team_id=world.team_a, max_amount=500)
        assert by_rule(await ask(database, world.alice, 400), "alpha")
        assert by_rule(await ask(database, world.amy, 800), "org first")
        assert by_rule(await ask(database, world.bob, 5_000), "org second")  # Beta: no team rule
        assert (await ask(database, world.nora, 9_001)).status == "pending"

    async def test_a_rule_past_its_cap_hands_over_to_the_next(
        self, database: Database, world: World
    ) -> None:
        await add_rule(database, world, "once", max_count=1)
        await add_rule(database, world, "twice", max_count=2)
        names = [(await ask(database, world.alice, 5)).decision_note for _ in range(3)]
        assert names == [
            "auto-approved by rule once",
            "auto-approved by rule twice",
            "auto-approved by rule twice",
        ]

    async def test_a_disabled_rule_approves_nothing(self, database: Database, world: World) -> None:
        await add_rule(database, world, enabled=False)
        assert (await ask(database, world.alice, 5)).status == "pending"


class TestRecord:
    async def test_audit_notification_and_metrics_name_the_rule(
        self, database: Database, world: World
    ) -> None:
        rule = await add_rule(database, world, "trial", max_amount=1_000)
        out = await ask(database, world.alice, 700)
        async with database.transaction(write=False) as s:
            entries = list(
                await s.scalars(
                    select(AuditEntry).where(
                        AuditEntry.target_type == "token_request",
                        AuditEntry.target_id == str(out.id),
                    )
                )
            )
            kinds = [n.kind for n in await s.scalars(select(Notification))]
        actions = {e.action: e for e in entries}
        approved = actions["token_request.approved"]
        assert approved.actor_id is None
        assert approved.details["rule"] == "trial" and approved.details["rule_id"] == rule.id
        assert approved.details["amount"] == 700
        # The requester hears of the decision; approvers are not asked to decide it.
        assert "request.decided" in kinds and "request.created" not in kinds
        [grant] = await grants_for(database, out.id)
        assert grant.amount == 700

    async def test_a_request_no_rule_covers_waits_for_a_person(
        self, database: Database, world: World
    ) -> None:
        await add_rule(database, world, max_amount=10)
        out = await ask(database, world.alice, 11)
        admin = await actor_for(database, world.admin)
        async with database.transaction() as s:
            decided = await decisions.approve(s, actor=admin, request_id=out.id)
        assert decided.decision_kind == "manual" and decided.decided_by_rule is None

    async def test_analytics_and_the_queue_show_rule_decisions(
        self, database: Database, world: World, client: httpx.AsyncClient
    ) -> None:
        await add_rule(database, world, "trial", max_amount=1_000)
        await ask(database, world.alice, 700)
        await ask(database, world.amy, 300)
        figures = (
            await client.get("/api/v1/analytics/requests", headers=world.admin.headers)
        ).json()
        assert figures["by_rule"] == [
            {
                "rule_id": figures["by_rule"][0]["rule_id"],
                "name": "trial",
                "count": 2,
                "granted": 1000,
            }
        ]
        assert {"kind": "rule", "count": 2, "granted": 1000} in figures["by_kind"]
        page = await client.get(
            "/api/v1/token-requests", params={"status": "approved"}, headers=world.admin.headers
        )
        assert {item["decided_by_rule"]["name"] for item in page.json()["items"]} == {"trial"}


@pytest.mark.usefixtures("postgres_only")
class TestConcurrentOnPostgres:
    async def test_one_persons_racing_submissions_never_pass_the_count(
        self, database: Database, world: World
    ) -> None:
        await add_rule(database, world, max_count=2, max_tokens=10_000)
        actor = await actor_for(database, world.alice)

        async def attempt() -> TokenRequestOut:
            async with database.transaction() as s:
                return await decisions.submit(s, actor=actor, amount=100)

        results = await asyncio.gather(*(attempt() for _ in range(12)), return_exceptions=True)
        done = [r for r in results if isinstance(r, TokenRequestOut)]
        failed = [r for r in results if not isinstance(r, TokenRequestOut)]
        assert all(isinstance(e, Conflict) for e in failed), failed
        assert sum(1 for r in done if r.status == "approved") == 2
        assert sum(1 for r in done if r.status == "pending") == 1
        assert (await balance_of(database, world.alice)).granted == 200
        await assert_ledger_consistent(database)

    async def test_many_peoples_racing_submissions_never_pass_the_pool_floor(
        self, database: Database
    ) -> None:
        # Twenty racers of 100,000 each (the organization's default) join the pool's users.
        world = await make_world(database, pool=ALLOCATED + 20 * 100_000 + 10_000)
        people = await members(database, world, 20, "racer")
        # The racers' own allocations come out of the pool too.
        async with database.transaction(write=False) as s:
            usage = await pool.pool_usage(s, organization_id=world.org_id)
        assert usage is not None
        floor = usage.left - 3_000  # room for exactly three grants of 1,000
        await add_rule(database, world, max_amount=1_000, pool_floor=floor)
        actors = [await actor_for(database, p) for p in people]

        async def attempt(i: int) -> TokenRequestOut:
            async with database.transaction() as s:
                return await decisions.submit(s, actor=actors[i], amount=1_000)

        results = await asyncio.gather(*(attempt(i) for i in range(20)))
        assert sum(1 for r in results if r.status == "approved") == 3
        async with database.transaction(write=False) as s:
            after = await pool.pool_usage(s, organization_id=world.org_id)
        assert after is not None and after.left == floor
        await assert_ledger_consistent(database)


class TestPreview:
    async def test_counts_last_periods_requests_with_each_persons_caps(
        self, database: Database, world: World
    ) -> None:
        now = utcnow()
        org_start, _ = rule_admin.last_period(now, reset_day=1, timezone="UTC")
        # Submitted last period (no rule then): three of alice's, one of bob's, one too large.
        moment = org_start + timedelta(days=1)
        for person, amount in [(world.alice, 100), (world.bob, 200), (world.amy, 9_000)]:
            out = await ask(database, person, amount, now=moment)
            admin = await actor_for(database, world.admin)
            async with database.transaction() as s:
                await decisions.approve(s, actor=admin, request_id=out.id, now=moment)
        for amount in (300, 400):
            out = await ask(database, world.alice, amount, now=moment)
            async with database.transaction() as s:
                await decisions.approve(s, actor=admin, request_id=out.id, now=moment)
        async with database.transaction(write=False) as s:
            result = await rule_admin.preview(
                s, actor=admin, values={"max_amount": 1_000, "max_count": 2}, now=now
            )
        # alice: 100 and 300 (the third is over her count); bob: 200; amy's is too large.
        assert (result.requests, result.approved, result.tokens) == (5, 3, 600)
