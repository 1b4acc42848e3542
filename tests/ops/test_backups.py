"""``tokendesk backup`` while a server writes, and ``tokendesk restore``: the copy is
consistent (``doctor`` passes on it), a restore is refused while a server runs on the
database, and PostgreSQL is sent to pg_dump and pg_restore."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path

import httpx

from tests.factories import World, make_world
from tests.ops.served import Served, tokendesk
from tokendesk.db import Database
from tokendesk.migrations.runner import upgrade

LOAD_SECONDS = 20.0
LOAD_CALLS = 400


def _url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def _usage_events(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return int(connection.execute("SELECT count(*) FROM usage_events").fetchone()[0])


async def _load(
    served: Served, world: World, done: list[int], stop: asyncio.Event, going: asyncio.Event
) -> None:
    """Gateway calls from four members at once until ``stop``, bounded in count and
    time; ``going`` is set once 20 are done."""
    ends = time.monotonic() + LOAD_SECONDS
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}

    async def caller(person: str) -> None:
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as http:
            while not stop.is_set() and time.monotonic() < ends and sum(done) < LOAD_CALLS:
                r = await http.post(
                    "/v1/chat/completions", json=body, headers=world.people[person].headers
                )
                assert r.status_code == 200, r.text
                done.append(1)
                if len(done) >= 20:
                    going.set()

    await asyncio.gather(*(caller(p) for p in ("alice", "amy", "bob", "owner")))


def _check_copies(live: Path, copies: list[Path], calls: int) -> None:
    url = _url(live)
    final = _usage_events(live)
    assert final == calls  # the refused restore changed nothing
    for copy in copies:
        # One self-contained file, consistent as of one commit: doctor passes on it.
        assert not Path(f"{copy}-wal").exists()
        doctor = tokendesk("doctor", database_url=_url(copy))
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    taken = [_usage_events(copy) for copy in copies]
    assert 0 < taken[0] <= taken[1] <= final
    # With the server stopped, the first copy goes back in place of the live database.
    restored = tokendesk("restore", str(copies[0]), database_url=url)
    assert restored.returncode == 0, restored.stderr
    assert "check it with `tokendesk doctor`" in restored.stdout
    [kept] = live.parent.glob("live.db.before-restore-*")
    assert _usage_events(live) == taken[0]
    assert _usage_events(kept) == final
    doctor = tokendesk("doctor", database_url=url)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr


async def test_a_backup_under_writes_is_consistent_and_restore_waits_for_the_server(
    tmp_path: Path,
) -> None:
    live = tmp_path / "live.db"
    url = _url(live)
    await asyncio.to_thread(upgrade, url)
    database = Database(url)
    try:
        world = await make_world(database)
    finally:
        await database.dispose()
    served = Served(url, tmp_path / "serve.log")
    copies = [tmp_path / "copy-1.db", tmp_path / "copy-2.db"]
    try:
        await asyncio.to_thread(served.wait_ready)
        done: list[int] = []
        stop, going = asyncio.Event(), asyncio.Event()
        load = asyncio.create_task(_load(served, world, done, stop, going))
        for copy in copies:
            async with asyncio.timeout(LOAD_SECONDS):
                await going.wait()
            made = await asyncio.to_thread(tokendesk, "backup", str(copy), database_url=url)
            assert made.returncode == 0, made.stderr
            assert f"backed up {live} to {copy}" in made.stdout
        during = len(done)
        # Refused while the server runs, and the live database is left as it was.
        refused = await asyncio.to_thread(tokendesk, "restore", str(copies[0]), database_url=url)
        stop.set()
        await load
        assert refused.returncode == 1
        assert f"a server is running on {live}" in refused.stderr
        assert during > 20
        served.terminate()
        assert await asyncio.to_thread(served.wait, 40) == 0, served.log
    finally:
        served.kill()
    await asyncio.to_thread(_check_copies, live, copies, len(done))


def test_backup_and_restore_send_postgresql_to_its_own_tools(
    postgres_only: None, db_url: str, tmp_path: Path
) -> None:
    backup = tokendesk("backup", str(tmp_path / "copy.db"), database_url=db_url)
    assert backup.returncode == 1
    assert "pg_dump -Fc" in backup.stderr
    assert not (tmp_path / "copy.db").exists()
    restore = tokendesk("restore", str(tmp_path / "copy.db"), database_url=db_url)
    assert restore.returncode == 1
    assert "pg_restore --clean" in restore.stderr


def test_backup_never_overwrites_and_restore_refuses_what_is_no_backup(tmp_path: Path) -> None:
    live = tmp_path / "live.db"
    url = _url(live)
    upgrade(url)
    taken = tmp_path / "taken.db"
    taken.write_text("keep me")
    over = tokendesk("backup", str(taken), database_url=url)
    assert over.returncode == 1
    assert "never overwrites" in over.stderr
    assert taken.read_text() == "keep me"
    before = live.read_bytes()
    junk = tokendesk("restore", str(taken), database_url=url)
    assert junk.returncode == 1
    assert "is not a tokendesk SQLite database" in junk.stderr
    missing = tokendesk("restore", str(tmp_path / "nowhere.db"), database_url=url)
    assert missing.returncode == 1
    assert "there is no backup at" in missing.stderr
    assert live.read_bytes() == before
    assert not list(tmp_path.glob("live.db.before-restore-*"))
