"""What keeps 10,000 open event streams cheap without losing what a stream promises:
heartbeats spread over the period (never all at once) and still at most a period
apart, a client that stops reading dropped without delaying anyone else, a
disconnected or ended stream's place and subscription let go at once."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from tests.events.support import served
from tests.events.test_stream_limit import STEP_SECONDS, Stream, opened
from tests.factories import Person, World
from tokendesk.db import Database
from tokendesk.events import stream as stream_module
from tokendesk.events.bus import Event, InProcessBus
from tokendesk.runtime import Runtime

# Long enough that opening the streams on a busy machine takes well under 0.4 of it.
PERIOD = 4.0
STREAMS = 20


@pytest.fixture
async def live(database: Database, db_url: str) -> AsyncIterator[tuple[str, Runtime]]:
    async with served(database, db_url, event_streams_per_user=64) as (url, app):
        yield url, app.state.runtime


async def pings(stream: Stream, until: float) -> list[float]:
    """When each heartbeat arrived on ``stream`` (monotonic seconds), up to ``until``."""
    seen: list[float] = []

    async def read() -> None:
        async for line in stream.lines:
            if line == ": ping":
                seen.append(time.monotonic())

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(read(), max(0.0, until - time.monotonic()))
    return seen


def user_event(person: Person, **data: Any) -> Event:
    return Event(type="balance.changed", data=data, user_id=person.id, organization_id=1)


async def gone(check: Any, within: float = STEP_SECONDS) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not let go in time"
        await asyncio.sleep(0.01)


class TestHeartbeats:
    async def test_streams_opened_together_beat_at_spread_times_each_within_the_period(
        self, live: tuple[str, Runtime], world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(stream_module, "HEARTBEAT_SECONDS", PERIOD)
        url, _ = live
        async with (
            httpx.AsyncClient(base_url=url, timeout=STEP_SECONDS) as http,
            AsyncExitStack() as stack,
        ):
            started = time.monotonic()
            streams, opened_at = [], []
            for _ in range(STREAMS):
                streams.append(await opened(http, stack, world.alice))
                opened_at.append(time.monotonic())
            all_open = time.monotonic()
            until = all_open + 2.2 * PERIOD
            beats = await asyncio.gather(*(pings(s, until) for s in streams))
        # Each stream beats within a period of opening, then once a period.
        for seen, opening in zip(beats, opened_at, strict=True):
            assert seen, "a stream went a whole period without a heartbeat"
            assert seen[0] - opening <= PERIOD + 0.5
            gaps = [b - a for a, b in itertools.pairwise(seen)]
            assert all(PERIOD - 0.5 <= gap <= PERIOD + 0.5 for gap in gaps), gaps
        # Opened within moments of each other, their first heartbeats still spread over
        # the period (a draw this narrow by chance: about 1 in 25,000).
        firsts = sorted(seen[0] for seen in beats)
        assert all_open - started < 0.4 * PERIOD, "opening took too long to tell"
        assert firsts[-1] - firsts[0] >= 0.5 * PERIOD, firsts


class TestSlowClients:
    async def test_a_client_that_stops_reading_is_dropped_and_holds_no_one_up(
        self, live: tuple[str, Runtime], world: World
    ) -> None:
        url, runtime = live
        port = int(url.rsplit(":", 1)[1])
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_connect(stuck, ("127.0.0.1", port))
            request = (
                f"GET /events HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: {world.alice.headers['Authorization']}\r\n\r\n"
            )
            await loop.sock_sendall(stuck, request.encode())
            await gone(lambda: runtime.event_streams.open_for(world.alice.id) == 1)
            async with (
                httpx.AsyncClient(base_url=url, timeout=STEP_SECONDS) as http,
                AsyncExitStack() as stack,
            ):
                bob = await opened(http, stack, world.bob)
                # Far more than the socket buffers and the stream's inbox hold; the
                # client never reads a byte of it.
                pad = "x" * 8_000
                for _ in range(40):
                    await runtime.bus.publish([user_event(world.alice, pad=pad)] * 100)
                    await asyncio.sleep(0.005)
                    if runtime.event_streams.open_for(world.alice.id) == 0:
                        break
                await gone(lambda: runtime.event_streams.open_for(world.alice.id) == 0)
                assert len(runtime.live_streams) == 1
                # Bob's stream was never behind Alice's.
                sent = time.monotonic()
                await runtime.bus.publish([user_event(world.bob, n=1)])

                async def bobs_event() -> None:
                    async for line in bob.lines:
                        if line.startswith("event: balance.changed"):
                            return

                await asyncio.wait_for(bobs_event(), 1.0)
                assert time.monotonic() - sent < 1.0
        finally:
            stuck.close()


class TestEndings:
    async def test_a_disconnected_stream_lets_its_place_and_subscription_go_at_once(
        self, live: tuple[str, Runtime], world: World
    ) -> None:
        url, runtime = live
        bus = runtime.bus
        assert isinstance(bus, InProcessBus)
        async with httpx.AsyncClient(base_url=url, timeout=STEP_SECONDS) as http:
            stack = AsyncExitStack()
            await opened(http, stack, world.alice)
            assert runtime.event_streams.open_for(world.alice.id) == 1
            assert len(runtime.live_streams) == 1
            closed = time.monotonic()
            await stack.aclose()
            await gone(lambda: runtime.event_streams.open_for(world.alice.id) == 0, 1.0)
            assert time.monotonic() - closed < 1.0
            assert len(runtime.live_streams) == 0
            assert world.alice.id not in bus._by_user

    async def test_ending_every_stream_closes_each_cleanly_and_they_reconnect(
        self, live: tuple[str, Runtime], world: World
    ) -> None:
        url, runtime = live
        async with (
            httpx.AsyncClient(base_url=url, timeout=STEP_SECONDS) as http,
            AsyncExitStack() as stack,
        ):
            streams = [await opened(http, stack, p) for p in (world.alice, world.bob)]
            assert runtime.live_streams.end_all() == 2

            async def ends(stream: Stream) -> None:
                async for _ in stream.lines:
                    pass

            await asyncio.wait_for(asyncio.gather(*(ends(s) for s in streams)), 1.0)
            await gone(lambda: len(runtime.live_streams) == 0, 1.0)
            again = await opened(http, stack, world.alice)
            assert again.response.status_code == 200
