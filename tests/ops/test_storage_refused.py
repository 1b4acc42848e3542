"""SQLite refusing writes, as a server meets it in production: the database file turned
read-only under a running server (an immutable file: root writes past a mode, not past
``chattr +i``) and a disk filling up (``PRAGMA max_page_count``, SQLite's own
SQLITE_FULL). Writes fail with a 503 that says why, reads keep working, nothing of the
refused transaction is written, and once the fault is gone the same write succeeds."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, func, select, text

from tests.factories import World
from tests.ops.faults import database_file, immutable
from tests.ops.pending import AMOUNT, add_pending
from tests.ops.served import tokendesk
from tokendesk.db import Database
from tokendesk.db.refusals import refusal
from tokendesk.ledger.models import Balance, LedgerEntry, Reservation
from tokendesk.token_requests.models import TokenRequest

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hello"}]}


@contextlib.asynccontextmanager
async def _disk_full(database: Database, db_url: str) -> Any:
    """Every new connection of the server's writer capped at the database's present
    size, the free pages first reclaimed so any growth at all is refused."""
    engine = database.write_engine.sync_engine

    def cap(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA page_count")
        pages = cursor.fetchone()[0]
        cursor.execute(f"PRAGMA max_page_count={pages}")
        cursor.close()

    vacuum = sqlite3.connect(database_file(db_url), isolation_level=None)
    try:
        vacuum.execute("VACUUM")
    finally:
        vacuum.close()
    await database.write_engine.dispose()
    event.listen(engine, "connect", cap)
    try:
        yield
    finally:
        event.remove(engine, "connect", cap)
        await database.write_engine.dispose()


def _refused(response: httpx.Response, cause: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "30"
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    message = body["detail"] if "detail" in body else body["error"]["message"]
    assert message.startswith("the database cannot be written: ")
    assert cause in message
    assert "Nothing was changed" in message


async def _counts(database: Database) -> tuple[int, int, int, int]:
    """Token requests, reservations, ledger entries, and tokens reserved or granted."""
    async with database.transaction(write=False) as session:
        requests = await session.scalar(select(func.count()).select_from(TokenRequest))
        holds = await session.scalar(select(func.count()).select_from(Reservation))
        entries = await session.scalar(select(func.count()).select_from(LedgerEntry))
        moved = await session.scalar(select(func.sum(Balance.reserved + Balance.granted)))
    return int(requests or 0), int(holds or 0), int(entries or 0), int(moved or 0)


def _doctor_clean(db_url: str) -> None:
    doctor = tokendesk("doctor", database_url=db_url)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr


async def test_a_read_only_database_refuses_writes_with_a_503_and_keeps_serving_reads(
    sqlite_only: None,
    database: Database,
    world: World,
    client: httpx.AsyncClient,
    db_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    alice = world.alice
    ask = {"amount": 1_000, "reason": "a read-only disk"}
    assert (await client.get("/api/v1/me", headers=alice.headers)).status_code == 200
    before = await _counts(database)
    with immutable(db_url):
        # The server's open connection meets the change as a failed write, and the
        # one opened instead as a read-only database.
        r = await client.post("/api/v1/token-requests", json=ask, headers=alice.headers)
        _refused(r, "I/O error")
        r = await client.post("/api/v1/token-requests", json=ask, headers=alice.headers)
        _refused(r, "read-only")
        r = await client.post("/v1/chat/completions", json=CHAT, headers=alice.headers)
        _refused(r, "read-only")
        assert r.json()["error"]["type"] == "server_error"
        me = await client.get("/api/v1/me", headers=alice.headers)
        assert me.status_code == 200
        assert me.json()["balance"]["remaining"] == 50_000
        mine = await client.get("/api/v1/token-requests", headers=alice.headers)
        assert mine.status_code == 200
    # The operator's log says so in a line per refusal, without a traceback.
    warnings = [record for record in caplog.records if record.levelname == "WARNING"]
    assert warnings and all(record.exc_info is None for record in warnings)
    assert "the database refused a transaction: its file is read-only" in caplog.text
    assert await _counts(database) == before
    # Fixed, writes work again without a restart: the connections opened read-only
    # are gone, the quick path's too (its hold no longer fails over to the slow one).
    caplog.clear()
    r = await client.post("/api/v1/token-requests", json=ask, headers=alice.headers)
    assert r.status_code == 201, r.text
    r = await client.post("/v1/chat/completions", json=CHAT, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert not [record for record in caplog.records if record.levelname == "WARNING"]
    _doctor_clean(db_url)


async def test_a_full_disk_refuses_a_bulk_approval_whole_and_keeps_serving_reads(
    sqlite_only: None, database: Database, world: World, client: httpx.AsyncClient, db_url: str
) -> None:
    ids = await add_pending(database, world, 2_000)
    bulk = {"action": "approve", "ids": ids, "note": "quarter end"}
    admin = world.admin.headers
    before = await _counts(database)
    async with _disk_full(database, db_url):
        r = await client.post("/api/v1/token-requests/bulk", json=bulk, headers=admin)
        _refused(r, "the disk is full")
        queue = await client.get("/api/v1/token-requests?status=pending&limit=1", headers=admin)
        assert queue.status_code == 200, queue.text
        assert (await client.get("/api/v1/me", headers=admin)).status_code == 200
        async with database.transaction(write=False) as session:
            statuses = await session.execute(
                select(TokenRequest.status, func.count()).group_by(TokenRequest.status)
            )
            assert dict(statuses.all()) == {"pending": len(ids)}
    assert await _counts(database) == before
    r = await client.post("/api/v1/token-requests/bulk", json=bulk, headers=admin)
    assert r.status_code == 200, r.text
    assert len(r.json()["decided"]) == len(ids)
    async with database.transaction(write=False) as session:
        granted = await session.scalar(select(func.sum(Balance.granted)))
        journal = await session.scalar(text("PRAGMA integrity_check"))
    assert granted == AMOUNT * len(ids)
    assert journal == "ok"
    _doctor_clean(db_url)


def test_a_lock_held_too_long_is_refused_for_a_moment_not_until_fixed(tmp_path: Path) -> None:
    path = str(tmp_path / "locked.db")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    waiter = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        with pytest.raises(sqlite3.OperationalError) as caught:
            waiter.execute("INSERT INTO t VALUES (1)")
        refused = refusal(caught.value)
        assert refused is not None
        assert refused.retry_after == 5
        assert "held its lock" in refused.message and "Try again in a moment" in refused.message
    finally:
        waiter.close()
        holder.close()
