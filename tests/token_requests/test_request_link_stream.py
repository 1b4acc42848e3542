"""The request page's live stream (``/ask/{token}/events``): the link holder's balance and
request events, as ``/events`` sends a member, for as long as the link holds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest

from tests.events.test_streams_follow_access import WITHIN, Stream, Streams
from tests.factories import World, snapshot
from tests.fake_upstream import RunningServer
from tests.ledger.helpers import end_period
from tests.token_requests.support import decide, submit
from tests.token_requests.test_request_links import flipped
from tokendesk.app import create_app
from tokendesk.config import Settings
from tokendesk.db import Database, utcnow
from tokendesk.token_requests.links import request_link


@pytest.fixture
def stream_settings(db_url: str) -> Settings:
    return Settings(
        database_url=db_url, demo=True, scheduler_enabled=False, event_streams_per_user=2
    )


@pytest.fixture
async def live(database: Database, stream_settings: Settings) -> AsyncIterator[str]:
    async with RunningServer(create_app(stream_settings, database=database)) as server:
        yield server.url


class LinkStreams(Streams):
    async def open_link(self, link: str) -> tuple[dict[str, object], Stream]:
        http = await self.client()
        response = await self._stack.enter_async_context(http.stream("GET", f"{link}/events"))
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["referrer-policy"] == "no-referrer"
        stream = Stream(response.aiter_lines())
        kind, first = await stream.next_event()
        assert kind == "snapshot"
        return first, stream


class TestLinkStream:
    async def test_the_stream_opens_with_the_balance_and_the_pending_request(
        self, live: str, database: Database, stream_settings: Settings, world: World
    ) -> None:
        pending = await submit(database, world.alice, amount=4_000)
        async with LinkStreams(live) as streams:
            first, _ = await streams.open_link(
                request_link(stream_settings, user_id=world.alice.id)
            )
        assert first["user_id"] == world.alice.id
        assert first["pending"] == {"id": pending.id, "amount": 4_000}
        balance = first["balance"]
        assert isinstance(balance, dict) and balance["remaining"] == 50_000

    async def test_an_ended_period_opens_the_stream_as_its_reset_leaves_it(
        self, live: str, database: Database, stream_settings: Settings, world: World
    ) -> None:
        await end_period(database, world.bob.id, used=99_000)
        before = await snapshot(database)
        async with LinkStreams(live) as streams:
            first, _ = await streams.open_link(request_link(stream_settings, user_id=world.bob.id))
        balance = first["balance"]
        assert isinstance(balance, dict) and balance["remaining"] == 100_000
        assert await snapshot(database) == before

    async def test_an_approval_arrives_with_the_new_balance(
        self, live: str, database: Database, stream_settings: Settings, world: World
    ) -> None:
        pending = await submit(database, world.alice, amount=4_000)
        async with LinkStreams(live) as streams:
            _, stream = await streams.open_link(
                request_link(stream_settings, user_id=world.alice.id)
            )
            await decide(database, world.owner, pending.id, "approve", note="go ahead")
            arrived = dict([await stream.next_event(), await stream.next_event()])
        updated, balance = arrived["request.updated"], arrived["balance.changed"]
        assert updated["change"] == "approved"
        assert updated["request"]["decision_note"] == "go ahead"
        assert balance["remaining"] == 54_000

    async def test_an_admins_link_streams_only_their_own_events(
        self, live: str, database: Database, stream_settings: Settings, world: World
    ) -> None:
        link = request_link(stream_settings, user_id=world.admin.id)
        async with LinkStreams(live) as streams:
            first, stream = await streams.open_link(link)
            await submit(database, world.alice)
            await submit(database, world.admin)
            # Events arrive in order: the queue change of alice's request would come first.
            kind, data = await stream.next_event()
        assert "pending_count" not in first
        assert kind == "request.updated" and data["request"]["user"]["id"] == world.admin.id

    async def test_the_stream_ends_when_the_user_is_deactivated(
        self, live: str, stream_settings: Settings, world: World
    ) -> None:
        async with LinkStreams(live) as streams:
            _, stream = await streams.open_link(request_link(stream_settings, user_id=world.bob.id))
            http = await streams.client()
            changed = await http.patch(
                f"/api/v1/users/{world.bob.id}",
                json={"is_active": False},
                headers=world.admin.headers,
            )
            assert changed.status_code == 200
            await stream.ends()
            again = await http.get(f"{request_link(stream_settings, user_id=world.bob.id)}/events")
        assert again.status_code == 403

    async def test_the_stream_ends_when_the_link_expires(
        self, live: str, stream_settings: Settings, world: World
    ) -> None:
        hours = timedelta(hours=stream_settings.request_link_hours)
        soon = utcnow() - hours + timedelta(seconds=2)
        link = request_link(stream_settings, user_id=world.bob.id, now=soon)
        async with LinkStreams(live) as streams:
            _, stream = await streams.open_link(link)
            await stream.ends()
            again = await (await streams.client()).get(f"{link}/events")
        assert again.status_code == 410
        assert again.headers["cache-control"] == "no-store"

    async def test_an_altered_link_gets_no_stream(
        self, live: str, stream_settings: Settings, world: World
    ) -> None:
        link = request_link(stream_settings, user_id=world.bob.id)
        async with httpx.AsyncClient(base_url=live, timeout=WITHIN) as http:
            response = await http.get(f"{flipped(link, len(link) - 2)}/events")
        assert response.status_code == 404

    async def test_link_streams_count_toward_the_users_open_streams(
        self, live: str, stream_settings: Settings, world: World
    ) -> None:
        link = request_link(stream_settings, user_id=world.bob.id)
        async with LinkStreams(live) as streams:
            # Kept: a line reader dropped unfinished closes its stream.
            kept = [await streams.open(world.bob.headers), await streams.open_link(link)]
            refused = await (await streams.client()).get(f"{link}/events")
            assert len(kept) == 2
        assert refused.status_code == 429
        assert refused.headers["retry-after"]
