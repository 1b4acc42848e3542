"""``tokendesk serve --workers N``: on PostgreSQL N whole instances on one port, each
with its own event bus listener; on SQLite refused, saying why."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from sqlalchemy import text

from tests.factories import World
from tests.ops.served import Served, tokendesk
from tokendesk.db import Database


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
        await asyncio.to_thread(served.wait_ready)
        deadline = time.monotonic() + 30
        while len(_children(served.process.pid)) < 2 or await _listeners(database) < before + 2:
            assert time.monotonic() < deadline, served.log
            await asyncio.sleep(0.2)
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
