"""The hold is the ceiling of what a call can cost: tokendesk sets the completion
budget it sends upstream, and a client's own value may only lower it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import World
from tests.gateway.conftest import Harness
from tests.gateway.test_gateway import MESSAGES, body
from tests.ledger_support import balance_of
from tokendesk.db import Database
from tokendesk.gateway.tokens import prompt_tokens
from tokendesk.ledger import service as ledger
from tokendesk.ledger.models import EntryKind


async def unchanged(harness: Harness, database: Database, user_id: int) -> None:
    assert harness.upstream.bodies == []
    after = await balance_of(database, user_id)
    assert (after.used, after.reserved) == (0, 0)


class TestBudgetSentUpstream:
    async def test_call_without_a_budget_sends_the_default_budget_upstream(
        self, harness: Harness, world: World
    ) -> None:
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast"), headers=world.alice.headers
        )
        assert r.status_code == 200, r.text
        assert harness.upstream.bodies[0]["max_tokens"] == 100  # the harness's default

    async def test_client_budget_below_the_default_goes_upstream_as_asked(
        self, harness: Harness, world: World
    ) -> None:
        r = await harness.http.post(
            "/v1/chat/completions",
            json=body("fast", max_completion_tokens=40),
            headers=world.alice.headers,
        )
        assert r.status_code == 200, r.text
        sent = harness.upstream.bodies[0]
        assert sent["max_tokens"] == 40 and "max_completion_tokens" not in sent

    async def test_the_smaller_of_both_client_fields_is_the_budget(
        self, harness: Harness, world: World
    ) -> None:
        r = await harness.http.post(
            "/v1/chat/completions",
            json=body("fast", max_tokens=70, max_completion_tokens=30),
            headers=world.alice.headers,
        )
        assert r.status_code == 200, r.text
        assert harness.upstream.bodies[0]["max_tokens"] == 30

    async def test_null_beside_a_huge_max_tokens_is_refused_not_held_at_the_default(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        r = await harness.http.post(
            "/v1/chat/completions",
            json=body("fast", max_completion_tokens=None, max_tokens=900_000),
            headers=world.alice.headers,
        )
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "max_tokens"
        await unchanged(harness, database, world.alice.id)

    async def test_upstream_that_wants_max_completion_tokens_gets_the_budget_there(
        self, harness: Harness, world: World
    ) -> None:
        r = await harness.http.post(
            "/v1/chat/completions", json=body("modern", max_tokens=30), headers=world.alice.headers
        )
        assert r.status_code == 200, r.text
        sent = harness.upstream.bodies[0]
        assert sent["max_completion_tokens"] == 30 and "max_tokens" not in sent


BAD_VALUES = [-1, 0, True, 1.5, 2.0, "10", [5], 16_385, 10**30]


class TestBudgetValidation:
    @pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
    @pytest.mark.parametrize("value", BAD_VALUES)
    async def test_bad_budget_is_a_400_naming_the_parameter(
        self, harness: Harness, world: World, database: Database, field: str, value: Any
    ) -> None:
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast", **{field: value}), headers=world.alice.headers
        )
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] == field and error["message"].startswith(f"{field}:")
        await unchanged(harness, database, world.alice.id)

    async def test_budget_beyond_the_models_own_limit_is_refused(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        r = await harness.http.post(
            "/v1/chat/completions", json=body("single", max_tokens=501), headers=world.alice.headers
        )
        assert r.status_code == 400
        assert "at most 500" in r.json()["error"]["message"]
        await unchanged(harness, database, world.alice.id)

    @pytest.mark.parametrize("value", [0, -2, True, 1.0, "2", 129])
    async def test_bad_n_is_a_400_naming_the_parameter(
        self, harness: Harness, world: World, database: Database, value: Any
    ) -> None:
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast", n=value), headers=world.alice.headers
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "n"
        await unchanged(harness, database, world.alice.id)


class TestChoices:
    async def test_n_multiplies_the_hold(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        # nora has 5,000 tokens: one choice of 2,000 fits, three do not.
        r = await harness.http.post(
            "/v1/chat/completions",
            json=body("fast", max_tokens=2000, n=3),
            headers=world.nora.headers,
        )
        assert r.status_code == 429, r.text
        assert (
            f"{prompt_tokens(MESSAGES, body('fast')) + 6000} needed" in r.json()["error"]["message"]
        )
        await unchanged(harness, database, world.nora.id)

    async def test_n_within_the_balance_goes_upstream_with_each_choices_budget(
        self, harness: Harness, world: World
    ) -> None:
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast", n=3), headers=world.nora.headers
        )
        assert r.status_code == 200, r.text
        sent = harness.upstream.bodies[0]
        assert (sent["n"], sent["max_tokens"]) == (3, 100)

    async def test_model_may_forbid_several_choices(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        r = await harness.http.post(
            "/v1/chat/completions", json=body("single", n=2), headers=world.alice.headers
        )
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "n"
        await unchanged(harness, database, world.alice.id)


async def leave(database: Database, user_id: int, remaining: int) -> None:
    """Adjust the user's balance so that ``remaining`` tokens are left."""
    async with database.transaction() as session:
        balance = await ledger.get_balance(session, user_id=user_id)
        await ledger.credit(
            session,
            user_id=user_id,
            kind=EntryKind.ADJUSTMENT,
            amount=remaining - balance.remaining,
            actor_id=None,
            reason="spent elsewhere",
        )


PROMPT = prompt_tokens(MESSAGES)


class TestShrinkingBudget:
    async def test_member_with_little_left_still_gets_an_answer_within_the_balance(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        await leave(database, world.nora.id, 80)  # under the default budget of 100
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast"), headers=world.nora.headers
        )
        assert r.status_code == 200, r.text
        assert harness.upstream.bodies[0]["max_tokens"] == 80 - PROMPT
        await harness.settled()
        after = await balance_of(database, world.nora.id)
        assert (after.remaining, after.reserved) == (80 - 24, 0)

    async def test_below_the_floor_the_call_is_refused_with_insufficient_quota(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        await leave(database, world.nora.id, PROMPT + 63)  # the floor is 64
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast"), headers=world.nora.headers
        )
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "insufficient_quota"
        assert harness.upstream.bodies == []
        assert (await balance_of(database, world.nora.id)).reserved == 0

    async def test_a_budget_the_client_chose_is_held_whole(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        await leave(database, world.nora.id, 80)
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast", max_tokens=100), headers=world.nora.headers
        )
        assert r.status_code == 429
        assert harness.upstream.bodies == []

    async def test_several_choices_share_what_the_balance_covers(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        await leave(database, world.nora.id, 150)
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast", n=2), headers=world.nora.headers
        )
        assert r.status_code == 200, r.text
        assert harness.upstream.bodies[0]["max_tokens"] == (150 - PROMPT) // 2

    async def test_a_weighted_models_budget_fits_the_weighted_hold(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        await leave(database, world.nora.id, 200)
        r = await harness.http.post(
            "/v1/chat/completions", json=body("heavy"), headers=world.nora.headers
        )
        assert r.status_code == 200, r.text
        # 2.5 tokens debited per token used: 200 pay for 80, the prompt's included.
        assert harness.upstream.bodies[0]["max_tokens"] == 80 - PROMPT
