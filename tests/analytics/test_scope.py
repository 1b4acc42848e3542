"""Who sees what: org and super admins the active organization, team owners their teams."""

from __future__ import annotations

import pytest

from tests.analytics.conftest import Usage
from tests.analytics.support import actor_of, at, figure, record, spend
from tests.factories import World
from tokendesk.accounts.auth import build_actor
from tokendesk.accounts.models import User
from tokendesk.analytics import service
from tokendesk.db import Database
from tokendesk.errors import Forbidden

FIGURES = [
    service.top_users,
    service.top_teams,
    service.usage_over_time,
    service.by_model,
    service.requests,
    service.forecast,
]


class TestMembers:
    @pytest.mark.parametrize("compute", FIGURES, ids=lambda f: f.__name__)
    async def test_a_member_sees_no_figure(
        self, database: Database, world: World, usage: Usage, compute: object
    ) -> None:
        alice = await actor_of(database, world.alice)

        with pytest.raises(Forbidden):
            await figure(database, alice, compute, now=usage.now)  # type: ignore[arg-type]


class TestTeamOwners:
    async def test_a_team_owner_sees_only_usage_spent_in_their_teams(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        owner = await actor_of(database, world.owner)

        users = await figure(database, owner, service.top_users, now=usage.now)
        teams = await figure(database, owner, service.top_teams, now=usage.now)
        models = await figure(database, owner, service.by_model, now=usage.now)
        chart = await figure(database, owner, service.usage_over_time, now=usage.now)

        assert [u.user_id for u in users.items] == [world.amy.id, world.alice.id, world.owner.id]
        assert users.total_tokens == 3900
        assert [t.name for t in teams.items] == ["Alpha"]
        assert [(m.model, m.tokens) for m in models.items] == [("gpt-4o", 3300), ("claude", 600)]
        assert sum(chart.totals) == 3900

    async def test_a_team_owner_sees_requests_and_forecast_of_their_teams_only(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        owner = await actor_of(database, world.owner)

        requests = await figure(database, owner, service.requests, now=usage.now)
        forecast = await figure(database, owner, service.forecast, now=usage.now)

        assert requests.total == 3
        assert {r.user_id for r in requests.top_requesters} == {world.alice.id, world.amy.id}
        assert {f.user_id for f in forecast.items} == {world.alice.id, world.amy.id, world.owner.id}

    async def test_a_team_owner_may_not_filter_on_another_team(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        owner = await actor_of(database, world.owner)

        with pytest.raises(Forbidden):
            await figure(database, owner, service.top_users, now=usage.now, team_id=world.team_b)

    async def test_usage_stays_with_the_team_it_was_spent_in_after_a_move(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        async with database.transaction() as s:
            amy = await s.get(User, world.amy.id)
            assert amy is not None
            amy.team_id = world.team_b
        await record(
            database, world.org_id, spend("m2", world.amy, 50, at(3, 20, 9)), now=usage.now
        )
        owner = await actor_of(database, world.owner)
        admin = await actor_of(database, world.admin)

        owners_view = await figure(database, owner, service.top_users, now=usage.now)
        beta_view = await figure(
            database, admin, service.top_users, now=usage.now, team_id=world.team_b
        )

        amy_for_owner = next(u for u in owners_view.items if u.user_id == world.amy.id)
        assert amy_for_owner.tokens == 2000
        amy_in_beta = next(u for u in beta_view.items if u.user_id == world.amy.id)
        assert amy_in_beta.tokens == 50


class TestAdmins:
    async def test_an_org_admin_filters_on_any_team_or_on_no_team(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        admin = await actor_of(database, world.admin)

        beta = await figure(database, admin, service.top_users, now=usage.now, team_id=world.team_b)
        none = await figure(database, admin, service.top_users, now=usage.now, team_id=0)

        assert [(u.user_id, u.tokens) for u in beta.items] == [(world.bob.id, 3000)]
        assert [(u.user_id, u.tokens) for u in none.items] == [(world.nora.id, 4700)]

    async def test_a_super_admin_sees_the_organization_they_switched_to(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        async with database.transaction(write=False) as s:
            root_user = await s.get(User, world.root.id)
            assert root_user is not None
            in_acme = await build_actor(s, root_user, organization_id=world.org_id)
            at_home = await build_actor(s, root_user)

        acme = await figure(database, in_acme, service.top_users, now=usage.now)
        home = await figure(database, at_home, service.top_users, now=usage.now)

        assert acme.total_tokens == 11_600
        assert [(u.user_id, u.tokens) for u in home.items] == [(world.oscar.id, 9999)]

    async def test_no_organization_sees_another_ones_usage(
        self, database: Database, world: World, usage: Usage
    ) -> None:
        olga = await actor_of(database, world.olga)

        models = await figure(database, olga, service.by_model, now=usage.now)
        teams = await figure(database, olga, service.top_teams, now=usage.now)
        requests = await figure(database, olga, service.requests, now=usage.now)

        assert [(m.model, m.tokens) for m in models.items] == [("gpt-4o", 9999)]
        assert [t.name for t in teams.items] == ["No team"]
        assert requests.total == 0
