"""Request statistics and the run-out forecast."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import update

from tests.analytics.conftest import Usage
from tests.analytics.support import actor_of, at, figure, record, spend
from tests.factories import Person, World
from tokendesk.accounts.models import User
from tokendesk.analytics import service
from tokendesk.analytics.service import project
from tokendesk.db import Database
from tokendesk.token_requests import decisions, rule_admin
from tokendesk.token_requests import service as token_requests


class TestRequests:
    async def test_counts_by_status_tokens_asked_and_granted(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)

        out = await figure(database, admin, service.requests, now=usage.now)

        assert [(s.status, s.count, s.requested, s.granted) for s in out.by_status] == [
            ("pending", 1, 20_000, 0),
            ("approved", 2, 12_000, 10_000),
            ("rejected", 1, 5_000, 0),
            ("cancelled", 0, 0, 0),
        ]
        assert (out.total, out.requested, out.granted, out.decided) == (4, 37_000, 10_000, 3)

    async def test_median_time_to_decision_of_an_odd_number_of_decisions(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)

        out = await figure(database, admin, service.requests, now=usage.now)

        # 30 minutes, 2 hours and 6 hours.
        assert out.median_decision_seconds == pytest.approx(2 * 3600, abs=0.01)

    async def test_median_of_an_even_number_is_the_mean_of_the_middle_two(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)
        amy = await actor_of(database, world.amy)
        async with database.transaction() as s:
            pending = (await token_requests.list_requests(s, actor=amy))[0][0]
            await decisions.approve(s, actor=admin, request_id=pending.id, now=at(3, 20, 9))

        out = await figure(database, admin, service.requests, now=usage.now)

        # 30 min, 2 h, 6 h and amy's 24 h: the middle two average 4 hours.
        assert out.median_decision_seconds == pytest.approx(4 * 3600, abs=0.01)

    async def test_median_leaves_out_what_rules_decided(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)
        async with database.transaction() as s:
            await rule_admin.add_rule(s, organization_id=world.org_id, name="small", max_amount=500)
        nora = await actor_of(database, world.nora)
        async with database.transaction() as s:
            auto = await decisions.submit(s, actor=nora, amount=100, now=at(3, 10, 9))
        assert auto.decision_kind == "rule"

        out = await figure(database, admin, service.requests, now=usage.now)

        # People's 30 minutes, 2 hours and 6 hours; the rule's 0 seconds would make it 1 h 15.
        assert out.decided == 4
        assert out.median_decision_seconds == pytest.approx(2 * 3600, abs=0.01)

    async def test_top_requesters_are_ranked_by_number_of_requests(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)

        out = await figure(database, admin, service.requests, now=usage.now)

        assert [
            (r.name, r.requests, r.approved, r.rejected, r.pending) for r in out.top_requesters
        ] == [
            ("Alice", 2, 2, 0, 0),
            ("Amy", 1, 0, 0, 1),
            ("Bob", 1, 0, 1, 0),
        ]

    async def test_requests_outside_the_range_are_left_out(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)

        out = await figure(database, admin, service.requests, now=usage.now, period="7d")

        assert (out.total, out.median_decision_seconds) == (2, pytest.approx(6 * 3600, abs=0.01))


class TestProject:
    def test_burn_rate_is_usage_over_the_time_since_the_period_began(self) -> None:
        burn, runs_out, before = project(
            now=at(3, 11, 0),
            since=at(3, 1, 0),
            period_end=at(4, 1, 0),
            used=30_000,
            remaining=20_000,
        )
        assert burn == 3_000
        assert runs_out is not None
        assert abs(runs_out - (at(3, 11, 0) + timedelta(days=20 / 3))) < timedelta(seconds=1)
        assert before is True

    def test_someone_who_will_not_run_out_before_the_reset_gets_no_date(self) -> None:
        burn, runs_out, before = project(
            now=at(3, 11, 0),
            since=at(3, 1, 0),
            period_end=at(4, 1, 0),
            used=10_000,
            remaining=40_000,
        )
        assert (burn, runs_out, before) == (1_000, None, False)

    def test_an_empty_balance_runs_out_now(self) -> None:
        assert project(
            now=at(3, 11), since=at(3, 1), period_end=at(4, 1), used=5_000, remaining=-10
        )[1:] == (at(3, 11), True)

    def test_usage_on_the_first_day_is_measured_over_a_whole_day(self) -> None:
        burn, runs_out, _ = project(
            now=at(3, 1, 2), since=at(3, 1, 0), period_end=at(4, 1), used=3_000, remaining=6_000
        )
        assert burn == 3_000
        assert runs_out == at(3, 3, 2)


async def joined_at(database: Database, person: Person, when: datetime) -> None:
    async with database.transaction() as s:
        await s.execute(update(User).where(User.id == person.id).values(created_at=when))


class TestForecast:
    async def test_users_are_listed_soonest_to_run_out_first(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)

        out = await figure(database, admin, service.forecast, now=usage.now)

        assert [f.user_id for f in out.items][:1] == [world.nora.id]
        nora = out.items[0]
        # 4,700 of 5,000 used in 19.5 days: 241 a day, 300 left last about 1.24 days.
        assert (nora.used, nora.remaining, nora.burn_per_day) == (4700, 300, 241)
        assert nora.runs_out_at is not None
        expected = usage.now + timedelta(days=300 / (4700 / 19.5))
        assert abs(nora.runs_out_at - expected) < timedelta(seconds=1)
        assert all(f.runs_out_at is None for f in out.items[1:])
        assert (out.users_with_usage, out.running_out) == (5, 1)
        assert (out.period_start, out.period_end) == (at(3, 1, 0), at(4, 1, 0))

    async def test_grants_count_as_available_tokens(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)

        out = await figure(database, admin, service.forecast, now=usage.now)

        alice = next(f for f in out.items if f.user_id == world.alice.id)
        assert (alice.allocation, alice.available, alice.used) == (50_000, 60_000, 1800)
        # Bob's late February event was charged in March: the balance counts it.
        bob = next(f for f in out.items if f.user_id == world.bob.id)
        assert bob.used == 3400

    async def test_usage_reported_for_days_before_joining_is_paced_from_its_first_day(
        self, database: Database, world: World
    ) -> None:
        now = at(3, 20)
        await joined_at(database, world.amy, at(3, 20, 9))
        days = [spend(f"amy-{day}", world.amy, 1000, at(3, day, 15)) for day in range(10, 20)]
        await record(database, world.org_id, *days, now=now)
        admin = await actor_of(database, world.admin)

        out = await figure(database, admin, service.forecast, now=now)

        amy = next(f for f in out.items if f.user_id == world.amy.id)
        # 10,000 from the start of 10 March to noon on the 20th: 10.5 days, not one.
        assert (amy.used, amy.burn_per_day) == (10_000, round(10_000 / 10.5))

    async def test_someone_who_joined_during_the_period_is_paced_from_joining(
        self, database: Database, world: World
    ) -> None:
        now = at(3, 20)
        await joined_at(database, world.amy, at(3, 10, 12))
        await record(
            database,
            world.org_id,
            spend("amy-1", world.amy, 2000, at(3, 10, 15)),
            spend("amy-2", world.amy, 3000, at(3, 15)),
            now=now,
        )
        admin = await actor_of(database, world.admin)

        out = await figure(database, admin, service.forecast, now=now)

        amy = next(f for f in out.items if f.user_id == world.amy.id)
        # 5,000 over the ten days since noon on 10 March, when amy joined and began.
        assert (amy.used, amy.burn_per_day) == (5_000, 500)
