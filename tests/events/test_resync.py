"""After the bus lost the database and is back (``resync``), every open event stream
sends a fresh snapshot: what was published meanwhile never reached this process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tests.events.support import served
from tests.factories import World
from tokendesk.db import Database
from tokendesk.ledger import service as ledger
from tokendesk.ledger.models import EntryKind

STEP_SECONDS = 10.0


async def frames(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    event = ""
    async for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            yield event, json.loads(line[6:])


async def test_a_resync_sends_every_open_stream_a_fresh_snapshot(
    database: Database, db_url: str, world: World
) -> None:
    async with (
        served(database, db_url) as (url, app),
        httpx.AsyncClient(base_url=url, timeout=STEP_SECONDS) as http,
        http.stream("GET", "/events", headers=world.alice.headers) as alice,
        http.stream("GET", "/events", headers=world.admin.headers) as admin,
    ):
        alice_frames, admin_frames = frames(alice.aiter_lines()), frames(admin.aiter_lines())
        first = await asyncio.wait_for(anext(alice_frames), STEP_SECONDS)
        assert first[0] == "snapshot"
        assert (await asyncio.wait_for(anext(admin_frames), STEP_SECONDS))[0] == "snapshot"
        # A change this process never heard of, as one made while its listener was down:
        # written by a database without a bus.
        unheard = Database(db_url)
        try:
            async with unheard.transaction() as session:
                await ledger.credit(
                    session,
                    user_id=world.alice.id,
                    kind=EntryKind.ADJUSTMENT,
                    amount=1234,
                    actor_id=world.admin.id,
                    reason="made while nobody listened",
                )
        finally:
            await unheard.dispose()
        app.state.runtime.bus.resync()
        event, data = await asyncio.wait_for(anext(alice_frames), STEP_SECONDS)
        assert event == "snapshot"
        assert data["balance"]["adjusted"] == first[1]["balance"]["adjusted"] + 1234
        assert data["balance"]["remaining"] == first[1]["balance"]["remaining"] + 1234
        event, data = await asyncio.wait_for(anext(admin_frames), STEP_SECONDS)
        assert event == "snapshot" and "pending_count" in data
