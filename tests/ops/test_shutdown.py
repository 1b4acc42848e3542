"""``tokendesk serve`` stopped with SIGTERM while a streamed call and an event stream
are open: the call ends whole or is cut and settled for what was delivered, the event
stream ends with a reconnect hint, nothing stays held, the process exits 0 within
TOKENDESK_SHUTDOWN_GRACE_SECONDS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import func, select

from tests.factories import World
from tests.fake_upstream import REPLY, USAGE, FakeUpstream, RunningServer
from tests.ops.served import Served, tokendesk
from tokendesk.db import Database
from tokendesk.ledger.models import Balance, Reservation, ReservationStatus
from tokendesk.metering.models import UsageEvent

WORDS = len(REPLY.split(" "))
# Between a process ending and this test seeing it, on a busy machine.
EXIT_SECONDS = 1.0


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[FakeUpstream, str]]:
    fake = FakeUpstream()
    async with RunningServer(fake) as server:
        yield fake, server.url


def _models(url: str) -> str:
    return json.dumps([{"name": "fast", "base_url": f"{url}/v1"}])


async def _open_events(http: httpx.AsyncClient, served: Served, key: str) -> AsyncIterator[str]:
    async with http.stream(
        "GET", f"{served.url}/events", headers={"Authorization": f"Bearer {key}"}
    ) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            yield line


@contextlib.asynccontextmanager
async def _served_with_a_stream(
    upstream: tuple[FakeUpstream, str],
    tmp_path: Path,
    db_url: str,
    key: str,
    *,
    chunk_seconds: float,
    grace: float,
) -> AsyncIterator[tuple[Served, httpx.AsyncClient, AsyncIterator[str]]]:
    """A served instance before the fake upstream, whose streams send a chunk every
    ``chunk_seconds``, with an event stream of ``key``'s open past its snapshot."""
    fake, url = upstream

    async def trickle() -> None:
        await asyncio.sleep(chunk_seconds)

    fake.trickle = trickle
    served = Served(
        db_url, tmp_path / "serve.log", models=_models(url), shutdown_grace_seconds=str(grace)
    )
    try:
        await asyncio.to_thread(served.wait_ready)
        async with httpx.AsyncClient(timeout=10) as http:
            events = _open_events(http, served, key)
            async for line in events:
                if line.startswith("event: snapshot"):
                    break
            yield served, http, events
    finally:
        served.kill()


async def _settled_once(database: Database, db_url: str, user_id: int) -> UsageEvent:
    """The one call's usage event, its hold settled and charged, and ``doctor`` clean."""
    async with database.transaction(write=False) as session:
        statuses = list((await session.scalars(select(Reservation.status))).all())
        events = list((await session.scalars(select(UsageEvent))).all())
        used = await session.scalar(
            select(func.sum(Balance.used)).where(Balance.user_id == user_id)
        )
    assert statuses == [ReservationStatus.SETTLED.value]
    [event] = events
    assert used == event.total_tokens
    doctor = tokendesk("doctor", database_url=db_url)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    return event


async def _stop_and_check(
    served: Served, grace: float, events: AsyncIterator[str], sent_at: float
) -> None:
    """The event stream ends with its reconnect hint soon after SIGTERM, new
    connections are refused, and the process exits 0 within ``grace``."""
    tail: list[str] = []
    async with asyncio.timeout(2):
        async for line in events:
            tail.append(line)
    assert any(line.startswith("retry: ") for line in tail), tail
    assert ": server shutting down" in tail
    code = await asyncio.to_thread(served.wait, grace + 5)
    took = time.monotonic() - sent_at
    assert code == 0, served.log
    # Status 0 says the shutdown finished its work within the grace (past it, the
    # watchdog exits 70); the interpreter's own exit after that is not bounded by it.
    assert took <= grace + EXIT_SECONDS, f"stopped in {took:.2f} s, grace {grace} s"


async def test_sigterm_lets_a_streamed_call_finish_and_settles_it(
    database: Database,
    world: World,
    db_url: str,
    upstream: tuple[FakeUpstream, str],
    tmp_path: Path,
) -> None:
    grace = 6.0
    alice = world.alice
    async with _served_with_a_stream(
        upstream, tmp_path, db_url, alice.key, chunk_seconds=0.15, grace=grace
    ) as (served, http, events):
        client = openai.AsyncOpenAI(base_url=f"{served.url}/v1", api_key=alice.key)
        stream = await client.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "hello"}], stream=True
        )
        words = []
        sent_at = 0.0
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                words.append(chunk.choices[0].delta.content)
                if len(words) == 2:
                    sent_at = served.terminate()
                    # A new connection is refused at once: the port is closed.
                    await asyncio.sleep(0.5)
                    with pytest.raises(httpx.ConnectError):
                        await http.get(f"{served.url}/healthz")
        # The call in flight was relayed whole, after SIGTERM.
        assert "".join(words) == " ".join(REPLY.split(" ")) + " "
        await _stop_and_check(served, grace, events, sent_at)
    event = await _settled_once(database, db_url, alice.id)
    assert (event.prompt_tokens, event.completion_tokens) == (
        USAGE["prompt_tokens"],
        USAGE["completion_tokens"],
    )


async def test_sigterm_cuts_a_call_that_outlasts_the_grace_and_charges_what_was_delivered(
    database: Database,
    world: World,
    db_url: str,
    upstream: tuple[FakeUpstream, str],
    tmp_path: Path,
) -> None:
    grace = 3.0
    alice = world.alice
    async with _served_with_a_stream(
        upstream, tmp_path, db_url, alice.key, chunk_seconds=1.0, grace=grace
    ) as (served, http, events):
        body = {
            "model": "fast",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
        }
        received = ""
        sent_at = 0.0
        with pytest.raises(httpx.RemoteProtocolError):
            async with http.stream(
                "POST", f"{served.url}/v1/chat/completions", json=body, headers=alice.headers
            ) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    for choice in json.loads(line[6:]).get("choices", []):
                        received += choice["delta"].get("content") or ""
                    if not sent_at:
                        sent_at = served.terminate()
        await _stop_and_check(served, grace, events, sent_at)
    assert 0 < len(received.split()) < WORDS
    event = await _settled_once(database, db_url, alice.id)
    # Cut before the upstream's usage came: charged the words sent (and the prompt).
    assert 0 < event.completion_tokens < USAGE["completion_tokens"] + WORDS
    assert event.prompt_tokens > 0
