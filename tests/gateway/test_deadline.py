"""Every upstream call ends before its hold can expire; a request body is strict JSON."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from tests.factories import World
from tests.gateway.conftest import Harness
from tests.gateway.test_gateway import MESSAGES, body, consistent, sse_data
from tests.ledger_support import balance_of
from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.gateway.tokens import prompt_tokens, text_tokens
from tokendesk.ledger import service as ledger
from tokendesk.ledger.models import Reservation, ReservationStatus

# Holds live 2 s, so calls end after 1.8 s; the trickling upstream would take 4 s.
SHORT_TTL = {"reservation_ttl_seconds": 2}
PAUSE_SECONDS = 0.2


class Expirer:
    """A trickling upstream that runs ``expire_holds`` before each piece it sends while
    the gateway's call is live, counting the holds it released."""

    def __init__(self, harness: Harness, database: Database) -> None:
        self.database = database
        self.expired = 0
        self.runs = 0
        self.live = True
        harness.upstream.deltas = [{"content": f"word{i} "} for i in range(20)]
        harness.upstream.trickle = self.trickle

    async def trickle(self) -> None:
        if self.live:
            async with self.database.transaction() as s:
                self.expired += await ledger.expire_holds(s)
            self.runs += 1
        await asyncio.sleep(PAUSE_SECONDS)


async def statuses(database: Database, user_id: int) -> list[ReservationStatus]:
    async with database.transaction(write=False) as s:
        rows = await s.scalars(select(Reservation.status).where(Reservation.user_id == user_id))
        return [ReservationStatus(status) for status in rows]


@pytest.mark.parametrize("harness", [SHORT_TTL], indirect=True)
class TestCallDeadline:
    async def test_a_trickling_stream_is_cut_before_its_hold_expires_and_charged_what_it_delivered(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        expirer = Expirer(harness, database)
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast", stream=True), headers=world.alice.headers
        )
        expirer.live = False
        chunks = [json.loads(d) for d in sse_data(r.text) if d != "[DONE]"]
        assert chunks[-1]["error"]["type"] == "upstream_error"
        delivered = "".join(
            c["choices"][0]["delta"].get("content", "") for c in chunks if c.get("choices")
        )
        assert 0 < len(delivered.split()) < 20
        assert expirer.runs > 1 and expirer.expired == 0
        await harness.settled()
        after = await balance_of(database, world.alice.id)
        assert after.used == prompt_tokens(MESSAGES) + text_tokens(delivered)
        assert after.reserved == 0
        assert await statuses(database, world.alice.id) == [ReservationStatus.SETTLED]
        assert harness.gateway.overruns.calls == 0
        await consistent(database)

    async def test_a_whole_reply_not_in_before_the_deadline_is_refused_and_its_hold_released(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        expirer = Expirer(harness, database)
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast"), headers=world.alice.headers
        )
        expirer.live = False
        assert r.status_code == 502
        assert r.json()["error"]["type"] == "upstream_error"
        assert expirer.runs > 1 and expirer.expired == 0
        after = await balance_of(database, world.alice.id)
        assert (after.used, after.reserved) == (0, 0)
        assert await statuses(database, world.alice.id) == [ReservationStatus.RELEASED]
        await consistent(database)


class TestDeadlineSettings:
    @pytest.mark.parametrize(
        ("ttl", "timeout"), [(600, 600), (600, 1000), (100, 90), (1, 120), (2, 1.8)]
    )
    def test_an_upstream_timeout_not_below_the_call_deadline_is_refused_at_start_up(
        self, ttl: int, timeout: float
    ) -> None:
        with pytest.raises(ValidationError, match="TOKENDESK_UPSTREAM_TIMEOUT_SECONDS") as exc:
            Settings(reservation_ttl_seconds=ttl, upstream_timeout_seconds=timeout)
        assert "TOKENDESK_RESERVATION_TTL_SECONDS" in str(exc.value)

    @pytest.mark.parametrize(
        "values",
        [
            {"reservation_ttl_seconds": 0},
            {"reservation_ttl_seconds": -5},
            {"upstream_timeout_seconds": 0},
            {"upstream_timeout_seconds": float("nan")},
            {"upstream_timeout_seconds": float("inf")},
        ],
    )
    def test_a_ttl_or_timeout_that_is_not_a_positive_number_is_refused(
        self, values: dict[str, float]
    ) -> None:
        with pytest.raises(ValidationError, match="|".join(values)):
            Settings(**values)

    def test_a_call_deadline_leaves_a_tenth_of_the_ttl_for_holding_and_settling(self) -> None:
        settings = Settings(reservation_ttl_seconds=600, upstream_timeout_seconds=120)
        assert settings.upstream_deadline_seconds == 540


class TestStrictRequestJson:
    @pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
    async def test_a_request_body_with_a_non_json_number_is_refused_naming_the_body(
        self, harness: Harness, world: World, database: Database, constant: str
    ) -> None:
        content = json.dumps(body("fast", temperature=0.5)).replace("0.5", constant)
        r = await harness.http.post(
            "/v1/chat/completions",
            content=content,
            headers={**world.alice.headers, "content-type": "application/json"},
        )
        assert r.status_code == 400
        error = r.json()["error"]
        assert (error["type"], error["param"]) == ("invalid_request_error", "body")
        assert constant.lstrip("-") in error["message"]
        assert harness.upstream.bodies == []
        after = await balance_of(database, world.alice.id)
        assert (after.used, after.reserved) == (0, 0)

    async def test_an_upstream_reply_with_non_json_numbers_in_its_logprobs_is_relayed(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        harness.upstream.deltas = [
            {"content": "Hi", "logprobs": {"content": [{"token": "Hi", "logprob": float("-inf")}]}}
        ]
        r = await harness.http.post(
            "/v1/chat/completions", json=body("fast"), headers=world.alice.headers
        )
        assert r.status_code == 200
        assert "-Infinity" in r.text
        await harness.settled()
        after = await balance_of(database, world.alice.id)
        assert (after.used, after.reserved) == (24, 0)
