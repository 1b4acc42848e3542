"""One of two ``tokendesk serve`` instances on PostgreSQL killed with SIGKILL in the
middle of a bulk approval of 10,000 requests and of gateway calls: the approval is
undone whole (PostgreSQL rolls back the transaction of a connection that went away),
the other instance serves on, expires the holds the killed one left on schedule and
can then approve all 10,000, and ``doctor`` is clean."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import bindparam, func, select, text

from tests.factories import Person, World
from tests.fake_upstream import FakeUpstream, RunningServer
from tests.ops.pending import AMOUNT, add_pending
from tests.ops.served import Served, tokendesk
from tokendesk.db import Database
from tokendesk.ledger.models import Balance, EntryKind, LedgerEntry, ReservationStatus
from tokendesk.token_requests.models import TokenRequest

PENDING = 10_000
TTL_SECONDS = 5
# Holds live TTL_SECONDS, so the killed instance's expire within the test; a call may
# wait 4 s for its upstream's next bytes (below 90% of the TTL, as the settings require).
SETTINGS = {
    "reservation_ttl_seconds": str(TTL_SECONDS),
    "upstream_timeout_seconds": "4",
    "scheduler_enabled": "1",
    "scheduler_interval_seconds": "0.5",
    "shutdown_grace_seconds": "5",
}
# The killed instance's calls are still waiting for the upstream when it dies.
SLOW_SECONDS = 6.0
# The longest any one thing is waited for.
BOUND = 30.0
# Where the approval waits, mid-transaction: its connection waits for a lock while
# holding the write lock on token_requests its decisions took.
APPROVAL_WAITING = (
    "SELECT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
    "WHERE a.datname = current_database() AND a.wait_event_type = 'Lock' "
    "AND l.granted AND l.relation = 'token_requests'::regclass AND l.mode = 'RowExclusiveLock'"
)
BACKEND_GONE = "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = :pid"
NO_HOLD_LEFT = "SELECT count(*) = 0 FROM reservations WHERE status = 'held'"
HOLDS = "SELECT count(*) FROM reservations WHERE status = :status AND user_id IN :users"


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    async with RunningServer(FakeUpstream(slow_seconds=SLOW_SECONDS, record=False)) as server:
        yield server.url


def _chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 64}


async def _scalar(database: Database, sql: str, **params: object) -> int:
    statement = text(sql)
    if "users" in params:
        statement = statement.bindparams(bindparam("users", expanding=True))
    async with database.transaction(write=False) as session:
        return int(await session.scalar(statement, params) or 0)


async def _until(database: Database, what: str, sql: str, **params: object) -> int:
    """Poll ``sql`` (one number) until it is non-zero, at most BOUND seconds; that number."""
    deadline = time.monotonic() + BOUND
    while not (found := await _scalar(database, sql, **params)):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.05)
    return found


async def _load(http: httpx.AsyncClient, person: Person, stop: asyncio.Event) -> list[float]:
    """Gateway calls one after the other until ``stop`` or the instance is gone; when
    each was answered (every one a 200)."""
    answered = []
    while not stop.is_set():
        try:
            r = await http.post("/v1/chat/completions", json=_chat("fast"), headers=person.headers)
        except httpx.TransportError:
            break
        assert r.status_code == 200, r.text
        answered.append(time.monotonic())
    return answered


async def _granted(database: Database) -> tuple[int, int, dict[str, int]]:
    """Grant ledger entries, tokens granted, and the requests by status."""
    async with database.transaction(write=False) as session:
        grants = await session.scalar(
            select(func.count())
            .select_from(LedgerEntry)
            .where(LedgerEntry.kind == EntryKind.GRANT.value)
        )
        granted = await session.scalar(select(func.sum(Balance.granted)))
        statuses = await session.execute(
            select(TokenRequest.status, func.count()).group_by(TokenRequest.status)
        )
    return int(grants or 0), int(granted or 0), {str(s): int(n) for s, n in statuses.all()}


async def test_a_killed_instance_leaves_nothing_half_done_and_the_other_serves_on(
    postgres_only: None,
    database: Database,
    world: World,
    db_url: str,
    upstream: str,
    tmp_path: Path,
) -> None:
    ids = await add_pending(database, world, PENDING)
    last_requester = await _scalar(database, "SELECT max(user_id) FROM token_requests")
    models = json.dumps([{"name": name, "base_url": f"{upstream}/v1"} for name in ("fast", "slow")])
    doomed = Served(db_url, tmp_path / "doomed.log", models=models, **SETTINGS)
    other = Served(db_url, tmp_path / "other.log", models=models, **SETTINGS)
    bulk = {"action": "approve", "ids": ids, "note": "quarter end"}
    admin = world.admin.headers
    callers = [world.alice, world.amy, world.bob, world.nora]
    users = [person.id for person in callers]
    try:
        await asyncio.gather(*(asyncio.to_thread(each.wait_ready) for each in (doomed, other)))
        async with (
            httpx.AsyncClient(base_url=doomed.url, timeout=60) as to_doomed,
            httpx.AsyncClient(base_url=other.url, timeout=60) as to_other,
        ):
            stop = asyncio.Event()
            load = asyncio.create_task(_load(to_other, world.owner, stop))
            doomed_load = asyncio.create_task(_load(to_doomed, world.oscar, stop))
            # The test locks one requester's balance, so the approval, having decided
            # every request, waits inside its transaction when it locks the balances.
            async with database.transaction() as blocker:
                await blocker.execute(
                    select(Balance.user_id)
                    .where(Balance.user_id == last_requester)
                    .with_for_update()
                )
                approval = asyncio.create_task(
                    to_doomed.post("/api/v1/token-requests/bulk", json=bulk, headers=admin)
                )
                waiting = await _until(database, "the approval mid-way", APPROVAL_WAITING)
                calls = [
                    asyncio.create_task(
                        to_doomed.post(
                            "/v1/chat/completions", json=_chat("slow"), headers=p.headers
                        )
                    )
                    for p in callers
                ]
                held = ReservationStatus.HELD.value
                while await _scalar(database, HOLDS, status=held, users=users) < len(callers):
                    assert not any(call.done() for call in calls), "a slow call ended early"
                    await asyncio.sleep(0.05)
                doomed.kill()
                killed_at = time.monotonic()
                assert await doomed_load, "the killed instance was under no load"
                # Neither the approval nor a call was answered: they were in flight.
                for task in [approval, *calls]:
                    with pytest.raises(httpx.TransportError):
                        await task
            # Its lock released, the dead instance's backend finds its client gone
            # and ends, its transaction rolled back: not one request approved.
            await _until(database, "its backend to end", BACKEND_GONE, pid=waiting)
            assert await _granted(database) == (0, 0, {"pending": PENDING})
            # The other instance's scheduler releases the dead one's holds once expired.
            expired = ReservationStatus.EXPIRED.value
            while await _scalar(database, HOLDS, status=expired, users=users) < len(callers):
                assert time.monotonic() - killed_at < TTL_SECONDS + BOUND, "holds left held"
                await asyncio.sleep(0.1)
            stop.set()
            answered = await load
            # The survivor answered throughout: every call a 200, and calls after the kill.
            assert [at for at in answered if at > killed_at], "no call answered after the kill"
            r = await to_other.post("/api/v1/token-requests/bulk", json=bulk, headers=admin)
            assert r.status_code == 200, r.text
            assert len(r.json()["decided"]) == PENDING
        assert await _granted(database) == (PENDING, PENDING * AMOUNT, {"approved": PENDING})
        # The dead instance's last fast call's hold (settled or not) is done with too.
        await _until(database, "no hold left", NO_HOLD_LEFT)
        other.terminate()
        assert await asyncio.to_thread(other.wait, 15) == 0, other.log
    finally:
        doomed.kill()
        other.kill()
    assert await _scalar(database, NO_HOLD_LEFT)
    assert await _scalar(database, "SELECT coalesce(sum(reserved), 0) FROM balances") == 0
    doctor = tokendesk("doctor", database_url=db_url)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
