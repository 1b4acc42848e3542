"""Reads never write: a GET shows an ended period as its rollover will leave it, and
leaves the ``balances`` row to the scheduler or the next write."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError
from starlette.routing import BaseRoute, Mount

from tests.accounts.support import sign_in
from tests.factories import Person, World, make_world
from tests.ledger.helpers import assert_ledger_consistent, end_period
from tests.ledger_support import balance_of
from tokendesk import deps
from tokendesk.accounts.models import ApiKey, Organization, Team
from tokendesk.db import Database
from tokendesk.ledger import scheduler
from tokendesk.ledger import service as ledger
from tokendesk.ledger.models import EntryKind, LedgerEntry
from tokendesk.metering.service import UsageInput, record_usage

API = "/api/v1"
STEP_SECONDS = 5.0


async def spend(database: Database, world: World, person: Person, *, overspent: bool) -> None:
    """A grant, an adjustment, 2,000 held for a call and usage: past what the
    period gives when ``overspent``."""
    async with database.transaction() as s:
        for kind, amount in ((EntryKind.GRANT, 10_000), (EntryKind.ADJUSTMENT, -3_000)):
            await ledger.credit(
                s, user_id=person.id, kind=kind, amount=amount, actor_id=world.admin.id, reason="x"
            )
        balance = await ledger.reserve(s, user_id=person.id, amount=2_000)
        assert balance.amount == 2_000
    used = 200_000 if overspent else 4_000
    async with database.transaction() as s:
        await record_usage(
            s,
            organization_id=world.org_id,
            events=[UsageInput(f"use-{person.id}", person.id, "gpt-4o", used, 0)],
        )


async def change_defaults(database: Database, world: World) -> None:
    """New defaults for the next period, written around the services (which would
    roll the ended period over): the rollover resolves the allocation afresh."""
    async with database.transaction() as s:
        await s.execute(
            update(Organization)
            .where(Organization.id == world.org_id)
            .values(default_allocation=120_000)
        )
        await s.execute(
            update(Team).where(Team.id == world.team_a).values(default_allocation=60_000)
        )


async def entry_count(database: Database) -> int:
    async with database.transaction(write=False) as s:
        return int(await s.scalar(select(func.count()).select_from(LedgerEntry)) or 0)


class TestAGetAfterThePeriodEnded:
    @pytest.mark.parametrize("carry", [True, False], ids=["carry", "no-carry"])
    @pytest.mark.parametrize("overspent", [True, False], ids=["overspent", "within"])
    @pytest.mark.parametrize(
        ("who", "allocation"),
        [("alice", 60_000), ("nora", 5_000), ("bob", 120_000)],
        ids=["team-default", "override", "org-default"],
    )
    async def test_shows_what_the_rollover_then_writes_and_writes_nothing(
        self,
        client: httpx.AsyncClient,
        database: Database,
        carry: bool,
        overspent: bool,
        who: str,
        allocation: int,
    ) -> None:
        world = await make_world(database, carry_over_debt=carry)
        person = world.people[who]
        await spend(database, world, person, overspent=overspent)
        ended = await balance_of(database, person.id)
        start = await end_period(database, person.id)
        await change_defaults(database, world)
        before, entries = await balance_of(database, person.id), await entry_count(database)

        me = await client.get(f"{API}/me", headers=person.headers)
        listed = await client.get(f"{API}/users/{person.id}", headers=world.admin.headers)
        assert me.status_code == listed.status_code == 200, (me.text, listed.text)
        shown = me.json()["balance"]
        assert listed.json()["balance"] == shown

        ended_with = ended.allocation + ended.granted + ended.adjusted - ended.used
        carried = min(ended_with, 0) if carry else 0
        assert (carried < 0) == (carry and overspent)
        assert shown["allocation"] == allocation
        assert (shown["granted"], shown["adjusted"], shown["used"]) == (0, carried, 0)
        assert shown["reserved"] == 2_000
        assert shown["remaining"] == allocation + carried - 2_000
        assert datetime.fromisoformat(shown["period_start"]) == start
        # Nothing was written: the row and the ledger are as they were.
        after = await balance_of(database, person.id)
        assert ledger.balance_snapshot(after) == ledger.balance_snapshot(before)
        assert await entry_count(database) == entries

        assert (await scheduler.run_once(database)).reset >= 1
        rolled = await client.get(f"{API}/me", headers=person.headers)
        assert rolled.json()["balance"] == shown
        assert (await balance_of(database, person.id)).period_start == start
        await assert_ledger_consistent(database)

    async def test_the_next_write_rolls_over_to_what_was_shown(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        await spend(database, world, world.alice, overspent=True)
        start = await end_period(database, world.alice.id)
        shown = (await client.get(f"{API}/me", headers=world.alice.headers)).json()["balance"]
        assert (await balance_of(database, world.alice.id)).period_start < start

        async with database.transaction() as s:
            await ledger.credit(
                s,
                user_id=world.alice.id,
                kind=EntryKind.ADJUSTMENT,
                amount=1_000,
                actor_id=world.admin.id,
                reason="after the reset",
            )
        after = (await client.get(f"{API}/me", headers=world.alice.headers)).json()["balance"]
        raised = {"adjusted": shown["adjusted"] + 1_000, "remaining": shown["remaining"] + 1_000}
        assert after == {**shown, **raised}
        assert (await balance_of(database, world.alice.id)).period_start == start
        await assert_ledger_consistent(database)


class Sent:
    """One request sent straight to the ASGI app: what it has sent back so far."""

    def __init__(self, app: Any, path: str, headers: dict[str, str]) -> None:
        self.status = 0
        self.body = b""
        self.complete = asyncio.Event()
        self.progress = asyncio.Event()
        self.gone = asyncio.Event()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("test", 80),
        }
        self.task = asyncio.create_task(app(scope, self._receive, self._send))

    async def _receive(self) -> dict[str, Any]:
        if not self.gone.is_set() and not getattr(self, "_asked", False):
            self._asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        self.progress.set()
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")
            if not message.get("more_body", False):
                self.complete.set()

    async def until(self, seen: bytes | None = None) -> None:
        """Until the response is complete (or, for a stream, shows ``seen``)."""
        async with asyncio.timeout(STEP_SECONDS):
            while not (self.complete.is_set() or (seen is not None and seen in self.body)):
                self.progress.clear()
                await self.progress.wait()

    async def finished(self) -> None:
        self.gone.set()
        await asyncio.wait_for(self.task, STEP_SECONDS)


async def cookie_of(app: Any, person: Person) -> str:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await sign_in(http, person.email, "correct horse battery", next_url="/admin")
        assert response.status_code == 303, response.text
        return "; ".join(f"{name}={value}" for name, value in http.cookies.items())


class TestAGetWhileAnotherConnectionWrites:
    """On SQLite one connection writes at a time: a GET must not wait for it."""

    async def test_me_an_admin_page_and_a_stream_snapshot_answer_meanwhile(
        self, app: Any, database: Database, world: World, sqlite_only: None
    ) -> None:
        await end_period(database, world.alice.id)
        cookie = await cookie_of(app, world.admin)
        async with database.transaction() as writing:
            # The writer's lock, taken for real: this transaction has written.
            await writing.execute(
                update(Organization).where(Organization.id == world.org_id).values(name="Acme")
            )
            me = Sent(app, f"{API}/me", world.alice.headers)
            page = Sent(app, "/admin/users", {"cookie": cookie})
            stream = Sent(app, "/events", world.bob.headers)
            await me.until()
            await page.until()
            await stream.until(seen=b"event: snapshot")
            assert (me.status, page.status, stream.status) == (200, 200, 200), me.body
            assert b'"allocation":50000' in me.body
            assert b"Alice" in page.body
        # The keys' "last used" stamps, due on first use, were written once the
        # responses had been sent (the stream's once it has ended).
        await me.finished()
        await stream.finished()
        await page.finished()
        async with database.transaction(write=False) as s:
            stamps = await s.scalars(
                select(ApiKey.last_used_at).where(
                    ApiKey.user_id.in_([world.alice.id, world.bob.id])
                )
            )
            assert all(stamp is not None for stamp in stamps.all())
        assert (await balance_of(database, world.alice.id)).period_end < datetime.now().astimezone()


def _calls(dependant: Dependant) -> Iterator[Any]:
    for dependency in dependant.dependencies:
        yield dependency.call
        yield from _calls(dependency)


def _get_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute) and "GET" in route.methods:
            yield route
        elif isinstance(route, Mount):
            yield from _get_routes(route.routes)
        elif (included := getattr(route, "original_router", None)) is not None:
            # An included router, as this FastAPI keeps it.
            yield from _get_routes(included.routes)


class TestEveryGetRoute:
    def test_runs_in_a_read_transaction(self, app: Any) -> None:
        routes = list(_get_routes(app.routes))
        assert len(routes) > 40
        writing = [
            r.path for r in routes if any(c is deps._write_session for c in _calls(r.dependant))
        ]
        assert writing == []


class TestAReadTransaction:
    async def test_refuses_to_write_on_sqlite(
        self, database: Database, world: World, sqlite_only: None
    ) -> None:
        with pytest.raises(OperationalError, match="readonly"):
            async with database.transaction(write=False) as s:
                await s.execute(
                    update(Organization).where(Organization.id == world.org_id).values(name="X")
                )
