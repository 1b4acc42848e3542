"""Rankings and sums of the usage figures on a hand-built month (see conftest)."""

from __future__ import annotations

from tests.analytics.conftest import Usage
from tests.analytics.support import actor_of, d, figure
from tests.factories import World
from tokendesk.accounts import teams
from tokendesk.analytics import service
from tokendesk.db import Database


class TestTopUsers:
    async def test_users_are_ranked_by_tokens_used_in_the_period(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)

        out = await figure(database, admin, service.top_users, now=usage.now)

        names = {p.id: handle for handle, p in world.people.items()}
        assert [(names[u.user_id], u.tokens) for u in out.items] == list(usage.current.items())
        assert out.total_tokens == sum(usage.current.values())
        assert out.active_users == 5

    async def test_each_row_carries_team_allocation_share_requests_and_grants(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)

        out = await figure(database, admin, service.top_users, now=usage.now)

        alice = next(u for u in out.items if u.user_id == world.alice.id)
        assert (alice.team_name, alice.allocation, alice.range_allocation) == (
            "Alpha",
            50_000,
            50_000,
        )
        assert alice.share_of_allocation == 1800 / 50_000
        assert (alice.requests, alice.requested, alice.granted) == (2, 12_000, 10_000)
        assert alice.calls == 3
        bob = next(u for u in out.items if u.user_id == world.bob.id)
        assert (bob.requests, bob.requested, bob.granted) == (1, 5_000, 0)

    async def test_a_range_of_days_pro_rates_the_monthly_allocation(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)

        out = await figure(database, admin, service.top_users, now=usage.now, period="7d")

        names = {p.id: handle for handle, p in world.people.items()}
        assert {names[u.user_id]: u.tokens for u in out.items} == usage.last_7_days
        nora = next(u for u in out.items if u.user_id == world.nora.id)
        # 7 of March's 31 days of a 5,000 allocation.
        assert nora.range_allocation == round(5_000 * 7 / 31)

    async def test_late_usage_counts_on_the_day_it_happened(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)

        out = await figure(database, admin, service.top_users, now=usage.now, period="previous")

        assert [(u.user_id, u.tokens) for u in out.items] == [(world.bob.id, 400)]

    async def test_a_model_filter_counts_only_that_model(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)

        out = await figure(database, admin, service.top_users, now=usage.now, model="claude")

        assert [(u.user_id, u.tokens, u.calls) for u in out.items] == [
            (world.alice.id, 500, 1),
            (world.owner.id, 100, 1),
        ]

    async def test_limit_keeps_the_totals_of_everyone(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)

        out = await figure(database, admin, service.top_users, now=usage.now, limit=2)

        assert [u.user_id for u in out.items] == [world.nora.id, world.bob.id]
        assert out.total_tokens == sum(usage.current.values())


class TestTopTeams:
    async def test_teams_are_ranked_by_tokens_and_users_without_a_team_form_their_own_row(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)

        out = await figure(database, admin, service.top_teams, now=usage.now)

        assert [(t.name, t.tokens, t.members) for t in out.items] == [
            ("No team", 4700, 2),
            ("Alpha", 3900, 3),
            ("Beta", 3000, 1),
        ]
        alpha = out.items[1]
        assert (alpha.requests, alpha.requested, alpha.granted) == (3, 32_000, 10_000)
        assert alpha.share_of_tokens == 3900 / 11_600

    async def test_an_idle_team_still_shows_with_zero(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)

        out = await figure(database, admin, service.top_teams, now=usage.now, period="previous")

        assert [(t.name, t.tokens) for t in out.items] == [("Beta", 400), ("Alpha", 0)]

    async def test_usage_of_a_deleted_team_stays_under_its_old_id(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)
        async with database.transaction() as s:
            await teams.delete_team(s, actor=admin, team_id=world.team_b)

        out = await figure(database, admin, service.top_teams, now=usage.now)

        beta = next(t for t in out.items if t.team_id == world.team_b)
        assert (beta.name, beta.exists, beta.tokens) == (
            f"Deleted team #{world.team_b}",
            False,
            3000,
        )


class TestUsageOverTime:
    async def test_days_are_stacked_by_team(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)

        out = await figure(database, admin, service.usage_over_time, now=usage.now, period="7d")

        assert out.days == [d(3, day) for day in range(14, 21)]
        stacks = {s.label: s.tokens for s in out.series}
        assert stacks == {
            "No team": [0, 0, 0, 0, 0, 4700, 0],
            "Alpha": [0, 0, 0, 0, 300, 2000, 0],
        }
        assert out.totals == [0, 0, 0, 0, 300, 6700, 0]

    async def test_days_are_stacked_by_model(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)

        out = await figure(database, admin, service.usage_over_time, now=usage.now, stack="model")

        assert [(s.label, s.total) for s in out.series] == [("gpt-4o", 11_000), ("claude", 600)]
        assert len(out.days) == 31
        assert out.totals[4] == 3500  # 5 March: alice's 500 on claude and bob's 3,000

    async def test_stacks_past_the_limit_are_summed_as_other(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)

        out = await figure(database, admin, service.usage_over_time, now=usage.now, series=1)

        assert [(s.key, s.label, s.total) for s in out.series] == [
            (str(0), "No team", 4700),
            ("other", "Other (2 teams)", 6900),
        ]


class TestByModel:
    async def test_tokens_and_calls_per_model(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)

        out = await figure(database, admin, service.by_model, now=usage.now)

        assert [(m.model, m.tokens, m.calls) for m in out.items] == [
            ("gpt-4o", 11_000, 5),
            ("claude", 600, 2),
        ]
        assert out.items[1].prompt_tokens + out.items[1].completion_tokens == 600
        assert (out.total_tokens, out.total_calls) == (11_600, 7)
