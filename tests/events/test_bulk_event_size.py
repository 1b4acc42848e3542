"""A bulk decision of any size still reaches other admin centers (NOTIFY size cap)."""

from __future__ import annotations

import httpx

from tests.factories import World
from tokendesk.accounts.auth import build_actor
from tokendesk.accounts.users import create_user
from tokendesk.db import Database
from tokendesk.events.bus import InProcessBus
from tokendesk.events.pg_bus import MAX_PAYLOAD, pack
from tokendesk.token_requests import decisions
from tokendesk.token_requests.events import BULK_EVENT_IDS


async def test_a_huge_bulk_decision_sends_a_queue_event_that_fits_in_one_notify(
    client: httpx.AsyncClient, database: Database, world: World, bus: InProcessBus
) -> None:
    ids = []
    async with database.transaction() as s:
        for n in range(BULK_EVENT_IDS + 30):
            user = await create_user(
                s,
                organization_id=world.org_id,
                email=f"bulk{n}@example.com",
                name=f"Bulk {n}",
                team_id=world.team_b,
            )
            request = await decisions.submit(s, actor=await build_actor(s, user), amount=100)
            ids.append(request.id)
    async with bus.subscribe() as queue:
        r = await client.post(
            "/api/v1/token-requests/bulk",
            json={"action": "reject", "ids": ids},
            headers=world.admin.headers,
        )
        assert r.status_code == 200, r.text
        events = []
        while not queue.empty():
            events.append(queue.get_nowait())
    [summary] = [e for e in events if e.type == "queue.changed"]
    assert summary.data["count"] == len(ids)
    assert len(summary.data["request_ids"]) == BULK_EVENT_IDS
    [payload] = pack([summary])
    assert len(payload) <= MAX_PAYLOAD
