"""What the database restart test drives against two served instances: gateway calls,
usage reports and approvals, every answer kept (:class:`Load`), and open event
streams, every frame kept (:class:`Stream`)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.factories import Person, World
from tests.ops.served import Served

# Every client call is bounded: a call that outlasts it is a hang, and fails the test.
CALL_SECONDS = 10.0
# How long reports refused during the outage may go on being refused after it.
RECOVERY_SECONDS = 30.0


@dataclass
class Outcome:
    kind: str
    instance: str
    status: int | None
    started: float
    took: float
    retry_after: str | None = None
    problem: str = ""


@dataclass
class Stream:
    """An open event stream's frames as (event, data, time received)."""

    name: str
    frames: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)
    ended: str = ""

    def __repr__(self) -> str:
        kinds = [f"{event}@{at:.1f}" for event, _, at in self.frames[-20:]]
        return f"<{self.name}: {len(self.frames)} frames, last {kinds}, ended {self.ended!r}>"

    def seen(self, event: str, since: float, match: Callable[[dict[str, Any]], bool]) -> bool:
        return any(e == event and at >= since and match(d) for e, d, at in self.frames)

    async def until(
        self,
        event: str,
        *,
        since: float,
        match: Callable[[dict[str, Any]], bool] = lambda _: True,
        within: float = 15.0,
    ) -> None:
        deadline = time.monotonic() + within
        while not self.seen(event, since, match):
            assert time.monotonic() < deadline, f"no {event} since {since:.1f}: {self!r}"
            await asyncio.sleep(0.05)


async def read(http: httpx.AsyncClient, url: str, key: str, stream: Stream) -> None:
    try:
        async with http.stream(
            "GET",
            f"{url}/events",
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(CALL_SECONDS, read=40.0),
        ) as response:
            assert response.status_code == 200, response.status_code
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    stream.frames.append((event, json.loads(line[6:]), time.monotonic()))
        stream.ended = "closed by the server"
    except (httpx.HTTPError, AssertionError) as exc:
        stream.ended = f"{type(exc).__name__}: {exc}"


class Load:
    """Gateway calls, usage reports and requests approved, on both instances, until
    stopped; every answer kept."""

    def __init__(self, http: httpx.AsyncClient, a: Served, b: Served, world: World) -> None:
        self.http = http
        self.a, self.b = a, b
        self.world = world
        self.outcomes: list[Outcome] = []
        self.stopping = asyncio.Event()
        # Usage events reported: id -> tokens; those not yet acknowledged are sent again.
        self.reported: dict[str, int] = {}
        self.unacknowledged: list[list[dict[str, Any]]] = []
        self.ids = itertools.count()
        self.recovered = 0.0

    async def call(
        self, kind: str, served: Served, method: str, path: str, who: Person, body: Any = None
    ) -> httpx.Response | None:
        name = "a" if served is self.a else "b"
        started = time.monotonic()
        try:
            response = await self.http.request(
                method, f"{served.url}{path}", json=body, headers=who.headers
            )
        except httpx.HTTPError as exc:
            self.outcomes.append(
                Outcome(kind, name, None, started, time.monotonic() - started, None, repr(exc))
            )
            return None
        self.outcomes.append(
            Outcome(
                kind,
                name,
                response.status_code,
                started,
                time.monotonic() - started,
                response.headers.get("Retry-After"),
                response.text[:300] if response.status_code >= 400 else "",
            )
        )
        return response

    async def chats(self, served: Served) -> None:
        body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
        while not self.stopping.is_set():
            r = await self.call(
                "chat", served, "POST", "/v1/chat/completions", self.world.alice, body
            )
            await asyncio.sleep(0.02 if r is not None and r.status_code == 200 else 0.2)

    async def report(self, served: Served, events: list[dict[str, Any]]) -> bool:
        r = await self.call(
            "usage", served, "POST", "/api/v1/usage", self.world.admin, {"events": events}
        )
        return r is not None and r.status_code == 200

    async def usage(self, served: Served) -> None:
        bob = self.world.bob.id
        while not self.stopping.is_set():
            events = []
            for _ in range(3):
                n = next(self.ids)
                event = {
                    "event_id": f"restart-{n}",
                    "user_id": bob,
                    "model": "other-app",
                    "prompt_tokens": 10 + n % 7,
                    "completion_tokens": 5,
                }
                self.reported[event["event_id"]] = event["prompt_tokens"] + 5
                events.append(event)
            if not await self.report(served, events):
                # As a reporter does: keep the batch and send it again, same ids.
                self.unacknowledged.append(events)
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.05)

    async def resend(self) -> None:
        """Every unacknowledged batch again, until each is taken (bounded)."""
        deadline = time.monotonic() + RECOVERY_SECONDS
        while self.unacknowledged:
            assert time.monotonic() < deadline, "usage reports still refused after the restart"
            events = self.unacknowledged[0]
            if await self.report(self.a, events):
                self.unacknowledged.pop(0)
            else:
                await asyncio.sleep(0.2)

    async def approvals(self) -> None:
        """Amy asks on one instance, the admin approves on the other."""
        amy, admin = self.world.amy, self.world.admin
        while not self.stopping.is_set():
            r = await self.call(
                "submit", self.a, "POST", "/api/v1/token-requests", amy, {"amount": 100}
            )
            if r is None or r.status_code != 201:
                # A refused submission may still have committed (its answer lost):
                # whatever is pending is approved below all the same.
                await asyncio.sleep(0.2)
            pending = await self.call(
                "list", self.b, "GET", "/api/v1/token-requests?status=pending", admin
            )
            if pending is None or pending.status_code != 200:
                await asyncio.sleep(0.2)
                continue
            for item in pending.json()["items"]:
                await self.call(
                    "approve",
                    self.b,
                    "POST",
                    f"/api/v1/token-requests/{item['id']}/approve",
                    admin,
                    {},
                )
            await asyncio.sleep(0.05)
