"""The auto top-up through the gateway: a chat call's settlement that crosses the
trigger tops the member up in the settlement's own transaction."""

from __future__ import annotations

from tests.factories import World
from tests.gateway.conftest import Harness
from tests.gateway.test_gateway import body, consistent
from tests.ledger_support import balance_of
from tests.token_requests.test_top_ups import turn_on, use
from tokendesk.db import Database


class TestSettlement:
    async def test_a_settled_call_that_crosses_the_trigger_tops_up(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        await turn_on(database, world)
        # Alice has 50,000: 39,500 used, and the call's 911 crosses 40,000.
        await use(database, world, world.alice, 39_500)
        harness.upstream.usage = {"prompt_tokens": 11, "completion_tokens": 900}
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast"), headers=world.alice.headers
        )
        assert r.status_code == 200, r.text
        await harness.settled()
        after = await balance_of(database, world.alice.id)
        assert (after.used, after.granted, after.reserved) == (40_411, 10_000, 0)
        await consistent(database)

    async def test_a_call_that_crosses_nothing_grants_nothing(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        await turn_on(database, world)
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast"), headers=world.alice.headers
        )
        assert r.status_code == 200, r.text
        await harness.settled()
        assert (await balance_of(database, world.alice.id)).granted == 0
