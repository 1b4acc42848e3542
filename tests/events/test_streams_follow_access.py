"""Open event streams follow permission changes, on the in-process bus and on
PostgreSQL's LISTEN/NOTIFY: a stream whose caller was deactivated, demoted, moved,
lost a team or had the key revoked ends within a second; others stay open."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.accounts.support import PASSWORD, key_id_of, page_csrf, sign_in
from tests.factories import Person, World
from tests.fake_upstream import RunningServer
from tokendesk.accounts.api_keys import issue_api_key
from tokendesk.accounts.models import User
from tokendesk.app import create_app
from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.events.pg_bus import PostgresBus

# How long a stream may take to end before the test fails: far beyond what the change's
# HTTP call and the event's hop take, so only a stream that does not end fails it.
WITHIN = 5.0


@pytest.fixture(params=["memory", "postgres"])
async def live(
    request: pytest.FixtureRequest, database: Database, db_url: str, backend: str
) -> AsyncIterator[str]:
    """tokendesk on a real port, its events on the in-process bus or on LISTEN/NOTIFY."""
    if request.param == "postgres":
        if backend != "postgres":
            pytest.skip("LISTEN/NOTIFY needs PostgreSQL")
        bus = PostgresBus(db_url)
        await bus.start()
        database.bus = bus
    app = create_app(
        Settings(database_url=db_url, demo=True, scheduler_enabled=False), database=database
    )
    try:
        async with RunningServer(app) as server:
            yield server.url
    finally:
        if request.param == "postgres":
            await bus.stop()


@dataclass
class Stream:
    lines: AsyncIterator[str]

    async def next_event(self) -> tuple[str, dict[str, Any]]:
        kind = ""
        async for line in self.lines:
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind:
                return kind, json.loads(line[6:])
        raise AssertionError("stream ended")

    async def event_of(self, kind: str) -> dict[str, Any]:
        """The next event of ``kind``, within a second."""

        async def find() -> dict[str, Any]:
            while True:
                found, data = await self.next_event()
                if found == kind:
                    return data

        return await asyncio.wait_for(find(), WITHIN)

    async def ends(self) -> None:
        """The server ends the stream within a second."""

        async def drain() -> None:
            async for _ in self.lines:
                pass

        await asyncio.wait_for(drain(), WITHIN)


class Streams:
    """Open ``/events`` streams against the live server; all closed at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Streams:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def client(self) -> httpx.AsyncClient:
        http = httpx.AsyncClient(base_url=self.url, timeout=10)
        return await self._stack.enter_async_context(http)

    async def open(
        self, headers: dict[str, str] | None = None, *, http: httpx.AsyncClient | None = None
    ) -> Stream:
        http = http or await self.client()
        response = await self._stack.enter_async_context(
            http.stream("GET", "/events", headers=headers or {})
        )
        assert response.status_code == 200
        stream = Stream(response.aiter_lines())
        kind, _ = await stream.next_event()
        assert kind == "snapshot"
        return stream


async def _call(url: str, method: str, path: str, by: Person, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        response = await http.request(method, path, headers=by.headers, **kwargs)
    assert response.status_code < 300, response.text
    return response


async def _submit(url: str, person: Person) -> None:
    await _call(url, "POST", "/api/v1/token-requests", person, json={"amount": 10})


async def _patch_user(url: str, world: World, person: Person, body: dict[str, Any]) -> None:
    await _call(url, "PATCH", f"/api/v1/users/{person.id}", world.admin, json=body)


class TestStreamsEnd:
    async def test_a_deactivated_team_owners_stream_ends_and_stops_receiving_the_queue(
        self, live: str, world: World
    ) -> None:
        async with Streams(live) as streams:
            owner = await streams.open(world.owner.headers)
            await _submit(live, world.alice)
            assert (await owner.event_of("queue.changed"))["change"] == "created"
            await _patch_user(live, world, world.owner, {"is_active": False})
            await owner.ends()
            again = await (await streams.client()).get("/events", headers=world.owner.headers)
            assert again.status_code == 401

    async def test_a_browser_session_stream_ends_when_its_user_is_deactivated(
        self, live: str, world: World
    ) -> None:
        async with Streams(live) as streams:
            browser = await streams.client()
            signed_in = await sign_in(browser, world.owner.email, PASSWORD)
            assert signed_in.status_code == 303, signed_in.text
            owner = await streams.open(http=browser)
            await _patch_user(live, world, world.owner, {"is_active": False})
            await owner.ends()

    async def test_a_browser_session_stream_ends_when_the_password_changes(
        self, live: str, world: World
    ) -> None:
        async with Streams(live) as streams:
            browser = await streams.client()
            signed_in = await sign_in(browser, world.alice.email, PASSWORD)
            assert signed_in.status_code == 303, signed_in.text
            alice = await streams.open(http=browser)
            await _call(
                live,
                "PATCH",
                f"/api/v1/users/{world.alice.id}",
                world.admin,
                json={"password": "another long passphrase"},
            )
            await alice.ends()

    async def test_signing_out_everywhere_ends_the_streams_of_every_browser(
        self, live: str, world: World
    ) -> None:
        async with Streams(live) as streams:
            phone, laptop = await streams.client(), await streams.client()
            for browser in (phone, laptop):
                assert (await sign_in(browser, world.alice.email, PASSWORD)).status_code == 303
            on_phone = await streams.open(http=phone)
            response = await laptop.post(
                "/logout/everywhere", data={"csrf_token": await page_csrf(laptop)}
            )
            assert response.status_code == 303
            await on_phone.ends()
            assert (await phone.get("/events")).status_code == 401

    async def test_signing_out_ends_that_browsers_stream(self, live: str, world: World) -> None:
        async with Streams(live) as streams:
            browser = await streams.client()
            await sign_in(browser, world.alice.email, PASSWORD)
            stream = await streams.open(http=browser)
            await browser.post("/logout", data={"csrf_token": await page_csrf(browser)})
            await stream.ends()

    async def test_a_demoted_team_owners_stream_ends_and_reopens_without_the_queue(
        self, live: str, world: World
    ) -> None:
        async with Streams(live) as streams:
            owner = await streams.open(world.owner.headers)
            await _patch_user(live, world, world.owner, {"role": "member"})
            await owner.ends()
            reopened = await streams.open(world.owner.headers)
            await _submit(live, world.alice)
            # The owner's own next event arrives; the queue event before it never did.
            await _call(
                live,
                "POST",
                f"/api/v1/users/{world.owner.id}/adjustments",
                world.admin,
                json={"amount": 5, "note": "marker"},
            )
            kind, data = await asyncio.wait_for(reopened.next_event(), WITHIN)
            assert (kind, data["cause"]) == ("balance.changed", "adjustment")

    async def test_a_team_owner_who_loses_their_team_has_the_stream_ended(
        self, live: str, world: World
    ) -> None:
        async with Streams(live) as streams:
            owner = await streams.open(world.owner.headers)
            await _call(
                live, "PATCH", f"/api/v1/teams/{world.team_a}", world.admin, json={"owner_ids": []}
            )
            await owner.ends()

    async def test_deleting_a_team_ends_its_owners_and_members_streams(
        self, live: str, world: World
    ) -> None:
        async with Streams(live) as streams:
            owner = await streams.open(world.owner.headers)
            alice = await streams.open(world.alice.headers)
            await _call(live, "DELETE", f"/api/v1/teams/{world.team_a}", world.admin)
            await owner.ends()
            await alice.ends()

    async def test_a_moved_members_stream_ends(self, live: str, world: World) -> None:
        async with Streams(live) as streams:
            alice = await streams.open(world.alice.headers)
            await _patch_user(live, world, world.alice, {"team_id": world.team_b})
            await alice.ends()

    async def test_a_stream_on_a_revoked_key_ends(
        self, live: str, database: Database, world: World
    ) -> None:
        key_id = await key_id_of(database, world.bob)
        async with Streams(live) as streams:
            bob = await streams.open(world.bob.headers)
            await _call(live, "DELETE", f"/api/v1/api-keys/{key_id}", world.admin)
            await bob.ends()
            again = await (await streams.client()).get("/events", headers=world.bob.headers)
            assert again.status_code == 401


class TestOtherStreamsStayOpen:
    async def test_other_peoples_streams_keep_receiving_their_events(
        self, live: str, world: World
    ) -> None:
        async with Streams(live) as streams:
            alice = await streams.open(world.alice.headers)
            admin = await streams.open(world.admin.headers)
            await _patch_user(live, world, world.owner, {"is_active": False})
            await _submit(live, world.alice)
            assert (await alice.event_of("request.updated"))["change"] == "created"
            assert (await admin.event_of("queue.changed"))["change"] == "created"

    async def test_revoking_another_key_leaves_a_stream_on_this_one_open(
        self, live: str, database: Database, world: World
    ) -> None:
        async with database.transaction() as s:
            user = await s.get(User, world.bob.id)
            assert user is not None
            second, _ = await issue_api_key(s, user=user, name="laptop")
            second_id = second.id
        async with Streams(live) as streams:
            bob = await streams.open(world.bob.headers)
            await _call(live, "DELETE", f"/api/v1/api-keys/{second_id}", world.admin)
            await _submit(live, world.bob)
            assert (await bob.event_of("request.updated"))["change"] == "created"
