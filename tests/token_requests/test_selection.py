"""The caller's own pending request, and "select all N matching" for the queue."""

from __future__ import annotations

from tests.factories import World
from tests.token_requests.support import actor_for, submit
from tokendesk.db import Database
from tokendesk.token_requests import decisions, service


class TestOwnPending:
    async def test_a_member_sees_their_pending_request_and_nothing_after_cancelling(
        self, database: Database, world: World
    ) -> None:
        request = await submit(database, world.alice, amount=1_500)
        actor = await actor_for(database, world.alice)
        async with database.transaction() as s:
            assert await service.own_pending(s, actor=actor) == service.PendingRef(
                request.id, 1_500
            )
            await decisions.cancel(s, actor=actor, request_id=request.id)
            assert await service.own_pending(s, actor=actor) is None


class TestMatchingPending:
    async def test_an_admin_selects_every_pending_request_but_their_own(
        self, database: Database, world: World
    ) -> None:
        alice = await submit(database, world.alice, amount=1_000)
        bob = await submit(database, world.bob, amount=2_000)
        await submit(database, world.admin, amount=4_000)
        actor = await actor_for(database, world.admin)
        async with database.transaction() as s:
            found = await service.matching_pending(s, actor=actor)
        assert (found.ids, found.tokens, found.own) == ([alice.id, bob.id], 3_000, 1)

    async def test_a_team_owner_selects_only_their_teams_requests(
        self, database: Database, world: World
    ) -> None:
        amy = await submit(database, world.amy, amount=1_000)
        await submit(database, world.bob, amount=2_000)
        actor = await actor_for(database, world.owner)
        async with database.transaction() as s:
            found = await service.matching_pending(s, actor=actor)
        assert (found.ids, found.tokens, found.own) == ([amy.id], 1_000, 0)

    async def test_search_narrows_the_selection(self, database: Database, world: World) -> None:
        await submit(database, world.alice, amount=1_000)
        bob = await submit(database, world.bob, amount=2_000)
        actor = await actor_for(database, world.admin)
        async with database.transaction() as s:
            found = await service.matching_pending(s, actor=actor, q="BOB@example")
        assert found.ids == [bob.id]
