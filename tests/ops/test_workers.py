"""``tokendesk serve --workers N``: on PostgreSQL N whole instances on one port, each
with its own event bus listener, that together never overspend a balance; on SQLite
refused, saying why."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
from sqlalchemy import func, select, text

from tests.factories import World
from tests.fake_upstream import USAGE, FakeUpstream, RunningServer
from tests.ledger_support import balance_of
from tests.ops.served import Served, tokendesk
from tokendesk.db import Database
from tokendesk.ledger.doctor import check_balances, check_references
from tokendesk.ledger.models import Reservation, ReservationStatus


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


async def _listeners(database: Database) -> int:
    async with database.transaction(write=False) as session:
        count = await session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query ILIKE 'LISTEN %'"
            )
        )
    return int(count or 0)


async def _until_both_listen(served: Served, database: Database, before: int) -> None:
    """Wait until ``served``'s two workers are up, each with its bus listener."""
    await asyncio.to_thread(served.wait_ready)
    deadline = time.monotonic() + 30
    while len(_children(served.process.pid)) < 2 or await _listeners(database) < before + 2:
        assert time.monotonic() < deadline, served.log
        await asyncio.sleep(0.2)


async def _until_settled(database: Database, user_id: int, served: Served) -> None:
    """Wait until none of the user's tokens are held."""
    deadline = time.monotonic() + 30
    while (await balance_of(database, user_id)).reserved:
        assert time.monotonic() < deadline, served.log
        await asyncio.sleep(0.05)


def test_more_than_one_worker_on_sqlite_is_refused_with_the_reason(
    sqlite_only: None, db_url: str
) -> None:
    started = time.monotonic()
    done = tokendesk("serve", "--workers", "2", "--port", "1", database_url=db_url, timeout=30)
    assert done.returncode == 1
    assert "--workers 2 needs PostgreSQL" in done.stderr
    assert "event bus lives inside one process" in done.stderr
    assert "TOKENDESK_DATABASE_URL" in done.stderr
    assert time.monotonic() - started < 30


def test_workers_on_the_memory_bus_are_refused(postgres_only: None, db_url: str) -> None:
    done = tokendesk(
        "serve", "--workers", "2", "--port", "1", database_url=db_url, event_bus="memory"
    )
    assert done.returncode == 1
    assert "TOKENDESK_EVENT_BUS=memory" in done.stderr


def test_no_workers_is_a_usage_error(db_url: str) -> None:
    done = tokendesk("serve", "--workers", "0", database_url=db_url)
    assert done.returncode == 2
    assert "--workers" in done.stderr


async def test_two_workers_on_postgresql_are_whole_instances(
    postgres_only: None, database: Database, world: World, db_url: str, tmp_path: Path
) -> None:
    before = await _listeners(database)
    served = Served(db_url, tmp_path / "serve.log", "--workers", "2", shutdown_grace_seconds="5")
    try:
        await _until_both_listen(served, database, before)
        # Each worker is an instance: its own LISTEN connection for the event bus.
        assert await _listeners(database) == before + 2
        # Every connection is served, whichever worker takes it: calls on new connections.
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as http:
            for _ in range(20):
                r = await http.get(
                    "/v1/models", headers={**world.alice.headers, "Connection": "close"}
                )
                assert r.status_code == 200
        sent_at = served.terminate()
        code = await asyncio.to_thread(served.wait, 15)
        assert code == 0, served.log
        assert time.monotonic() - sent_at < 15
        assert served.log.count("Started server process") == 2, served.log
    finally:
        served.kill()
    deadline = time.monotonic() + 10
    while await _listeners(database) != before:
        assert time.monotonic() < deadline, "the workers' listeners outlived them"
        await asyncio.sleep(0.2)


# Nora's 5,000 tokens cover about 200 calls of the fake upstream's 24; twice as many
# arrive, 24 at a time (below TOKENDESK_GATEWAY_CALLS_PER_USER, so every refusal is
# for tokens), each on a connection of its own so the kernel deals them to both workers.
RACE_CALLS, RACE_AT_ONCE, RACE_BUDGET = 400, 24, 50
RACE_BODY = {
    "model": "fast",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": RACE_BUDGET,
}


async def test_two_workers_hammering_one_small_balance_never_overspend(
    postgres_only: None, database: Database, world: World, db_url: str, tmp_path: Path
) -> None:
    allocation = (await balance_of(database, world.nora)).allocation
    listening = await _listeners(database)
    charge = USAGE["total_tokens"]
    async with RunningServer(FakeUpstream(record=False)) as upstream:
        models = json.dumps([{"name": "fast", "base_url": f"{upstream.url}/v1"}])
        served = Served(
            db_url,
            tmp_path / "serve.log",
            "--workers",
            "2",
            models=models,
            shutdown_grace_seconds="5",
        )
        try:
            await _until_both_listen(served, database, listening)
            calls = iter(range(RACE_CALLS))
            answers: list[httpx.Response] = []
            headers = {**world.nora.headers, "Connection": "close"}
            async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:

                async def caller() -> None:
                    for _ in calls:
                        answers.append(
                            await http.post("/v1/chat/completions", json=RACE_BODY, headers=headers)
                        )

                await asyncio.wait_for(
                    asyncio.gather(*(caller() for _ in range(RACE_AT_ONCE))), timeout=120
                )
                # Then one call at a time, each once the calls before it have settled
                # (a reply goes out before its settlement commits), until one is refused:
                # the balance ends spent whatever the race's last settlements gave back.
                for _ in range(allocation // charge):
                    await _until_settled(database, world.nora.id, served)
                    last = await http.post("/v1/chat/completions", json=RACE_BODY, headers=headers)
                    answers.append(last)
                    if last.status_code == 429:
                        break
            sent_at = served.terminate()
            assert await asyncio.to_thread(served.wait, 15) == 0, served.log
            assert time.monotonic() - sent_at < 15
        finally:
            served.kill()

    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {200, 429}, served.log
    refused = [r for r in answers if r.status_code == 429]
    assert refused and all(r.json()["error"]["code"] == "insufficient_quota" for r in refused)
    # The request ids begin with their worker's prefix: both workers took calls.
    served_by = {r.headers["x-request-id"].rsplit("-", 1)[0] for r in answers}
    assert len(served_by) == 2
    ok = statuses.count(200)
    balance = await balance_of(database, world.nora)
    # The fake upstream reports less than each call holds, so no call overruns its
    # hold: what the two workers debited together stays within the allocation.
    assert balance.used == ok * charge <= allocation
    assert balance.reserved == 0
    # The last call was refused for what the database says is left: less than a call's
    # hold (its budget and a few tokens of prompt), far less than two budgets.
    left = allocation - balance.used
    assert answers[-1].status_code == 429
    assert f"Not enough tokens: {left} left" in answers[-1].json()["error"]["message"]
    assert left < 2 * RACE_BUDGET
    async with database.transaction(write=False) as s:
        held = await s.scalar(
            select(func.count())
            .select_from(Reservation)
            .where(Reservation.status == ReservationStatus.HELD)
        )
        assert held == 0
        assert await check_balances(s) == []
        assert await check_references(s) == []
