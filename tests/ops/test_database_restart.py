"""PostgreSQL restarts under load, beneath two running instances (``tokendesk serve``
processes on a cluster of the test's own): calls during the outage answer 503 with a
``Retry-After`` hint within a bound, never a 500 or a hang; the instances recover by
themselves, their event buses listen again and every open event stream gets a fresh
snapshot; nothing reported is lost or charged twice, every hold is settled or expired,
and ``doctor`` is clean."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import func, select

from tests.conftest import SUMMARY
from tests.factories import World, make_world
from tests.fake_upstream import FakeUpstream, RunningServer
from tests.ops.pg_cluster import Cluster, unavailable
from tests.ops.restart_load import CALL_SECONDS, RECOVERY_SECONDS, Load, Outcome, Stream, read
from tests.ops.served import Served, tokendesk
from tokendesk.db import Database
from tokendesk.ledger.models import Balance, LedgerEntry, Reservation, ReservationStatus
from tokendesk.metering.models import UsageEvent
from tokendesk.token_requests.models import TokenRequest

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))

# What a call during the outage may take to be refused.
REFUSAL_SECONDS = 5.0
OUTAGE_SECONDS = 2.0
# The instances' holds: short, so a hold the outage made its caller forget expires
# within the test (with the scheduler ticking every second).
HOLD_TTL_SECONDS = 8
SNAPSHOT = "snapshot"


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    made = await asyncio.to_thread(Cluster)
    try:
        await asyncio.to_thread(made.start)
        conn = await asyncpg.connect(made.url("postgres").replace("+asyncpg", ""), timeout=10)
        try:
            await conn.execute("CREATE DATABASE tokendesk")
        finally:
            await conn.close()
        yield made
    finally:
        await asyncio.to_thread(made.remove)


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    async with RunningServer(FakeUpstream(record=False)) as server:
        yield server.url


def _serve(url: str, log: Path, upstream: str) -> Served:
    return Served(
        url,
        log,
        models=json.dumps([{"name": "fast", "base_url": f"{upstream}/v1"}]),
        shutdown_grace_seconds="5",
        reservation_ttl_seconds=str(HOLD_TTL_SECONDS),
        upstream_timeout_seconds="5",
        scheduler_enabled="1",
        scheduler_interval_seconds="1",
    )


async def _ready_again(served: Served, http: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + RECOVERY_SECONDS
    while True:
        assert served.process.poll() is None, f"the instance exited:\n{served.log}"
        with contextlib.suppress(httpx.HTTPError):
            if (await http.get(f"{served.url}/readyz", timeout=3)).status_code == 200:
                return
        assert time.monotonic() < deadline, f"not ready again:\n{served.log}"
        await asyncio.sleep(0.2)


async def _holds_closed(database: Database) -> dict[str, int]:
    """Every hold's status once none is held (they are settled, released or expired)."""
    deadline = time.monotonic() + HOLD_TTL_SECONDS + RECOVERY_SECONDS
    while True:
        async with database.transaction(write=False) as session:
            rows = (
                await session.execute(
                    select(Reservation.status, func.count()).group_by(Reservation.status)
                )
            ).all()
        statuses = {str(status): int(count) for status, count in rows}
        if not statuses.get(ReservationStatus.HELD.value):
            return statuses
        assert time.monotonic() < deadline, f"holds still held: {statuses}"
        await asyncio.sleep(0.5)


def _check_answers(outcomes: list[Outcome], down: float, up: float) -> None:
    allowed = {
        "chat": {200, 503},
        "usage": {200, 503},
        "submit": {201, 409, 503},
        "list": {200, 503},
        "approve": {200, 409, 503},
    }
    for outcome in outcomes:
        assert outcome.status in allowed[outcome.kind], outcome
        assert outcome.took < CALL_SECONDS, outcome
        if outcome.status == 503:
            assert outcome.retry_after is not None and int(outcome.retry_after) >= 1, outcome
            assert outcome.took < REFUSAL_SECONDS, outcome
    # Calls made while the database was down were refused, on both instances, each kind.
    during = [o for o in outcomes if down <= o.started and o.started + o.took <= up]
    for outcome in during:
        assert outcome.status == 503, outcome
    for kind in ("chat", "usage"):
        for instance in ("a", "b"):
            assert any(o.kind == kind and o.instance == instance for o in during), (kind, during)


async def test_instances_ride_out_a_database_restart_under_load(
    cluster: Cluster, upstream: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = cluster.url("tokendesk")
    upgraded = await asyncio.to_thread(tokendesk, "db", "upgrade", database_url=url)
    assert upgraded.returncode == 0, upgraded.stderr
    database = Database(url)
    try:
        world = await make_world(database)
        a = _serve(url, tmp_path / "a.log", upstream)
        b = _serve(url, tmp_path / "b.log", upstream)
        try:
            load = await _ride_out(cluster, database, world, a, b)
        finally:
            a.kill()
            b.kill()
        for served in (a, b):
            # An outage is no bug: warnings, no errors (the pool's own retries aside).
            errors = [line for line in served.log.splitlines() if " ERROR " in line]
            assert not errors, served.log
    finally:
        await database.dispose()
    doctor = await asyncio.to_thread(tokendesk, "doctor", database_url=url)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    request.config.stash[SUMMARY].append(_summary(load))


async def _ride_out(
    cluster: Cluster, database: Database, world: World, a: Served, b: Served
) -> Load:
    await asyncio.gather(asyncio.to_thread(a.wait_ready), asyncio.to_thread(b.wait_ready))
    pids = (a.process.pid, b.process.pid)
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(timeout=CALL_SECONDS, limits=limits) as http:
        amy_on_a, admin_on_b = Stream("amy on a"), Stream("admin on b")
        tasks = [
            asyncio.create_task(read(http, a.url, world.amy.key, amy_on_a)),
            asyncio.create_task(read(http, b.url, world.admin.key, admin_on_b)),
        ]
        load = Load(http, a, b, world)
        try:
            await amy_on_a.until(SNAPSHOT, since=0)
            await admin_on_b.until(SNAPSHOT, since=0)
            workers = [
                asyncio.create_task(load.chats(a)),
                asyncio.create_task(load.chats(b)),
                asyncio.create_task(load.usage(a)),
                asyncio.create_task(load.usage(b)),
                asyncio.create_task(load.approvals()),
            ]
            tasks.extend(workers)
            # Under load, and events crossing instances: amy's grant, approved on b.
            await amy_on_a.until(
                "balance.changed", since=0, match=lambda d: d.get("cause") == "grant"
            )
            await asyncio.sleep(1.0)
            await asyncio.to_thread(cluster.stop, "fast")
            down = time.monotonic()
            await asyncio.sleep(OUTAGE_SECONDS / 2)
            for served in (a, b):
                # Alive, and not ready: restarting an instance would cure nothing.
                assert (await http.get(f"{served.url}/healthz")).status_code == 200
                ready = await http.get(f"{served.url}/readyz")
                assert ready.status_code == 503 and "database" in ready.json()["failing"]
            await asyncio.sleep(OUTAGE_SECONDS / 2)
            up = time.monotonic()
            await asyncio.to_thread(cluster.start)
            started = time.monotonic()
            for served in (a, b):
                await _ready_again(served, http)
            load.recovered = time.monotonic() - started
            # The streams stayed open and each got a fresh snapshot once its bus listened.
            await amy_on_a.until(SNAPSHOT, since=up)
            await admin_on_b.until(SNAPSHOT, since=up)
            # Events cross instances again: a grant approved on b reaches amy on a.
            back = time.monotonic()
            await amy_on_a.until(
                "balance.changed", since=back, match=lambda d: d.get("cause") == "grant"
            )
            await admin_on_b.until("queue.changed", since=back)
            await asyncio.sleep(1.0)
            load.stopping.set()
            async with asyncio.timeout(CALL_SECONDS * 2):
                await asyncio.gather(*workers)
            await load.resend()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert (a.process.pid, b.process.pid) == pids
    assert a.process.poll() is None and b.process.poll() is None
    assert not amy_on_a.ended and not admin_on_b.ended, (amy_on_a.ended, admin_on_b.ended)
    _check_answers(load.outcomes, down, up)
    statuses = await _holds_closed(database)
    await _check_books(database, world, load, statuses)
    return load


def _summary(load: Load) -> str:
    refused = [o for o in load.outcomes if o.status == 503]
    slowest = max((o.took for o in refused), default=0.0)
    return (
        f"database restart: {len(load.outcomes)} calls, {len(refused)} answered 503 "
        f"(slowest {slowest * 1000:.0f} ms), both instances ready "
        f"{load.recovered:.1f} s after the database started"
    )


async def _check_books(
    database: Database, world: World, load: Load, statuses: dict[str, int]
) -> None:
    """Every answered call charged once, every reported event recorded once, every
    approval granted once."""
    chats = sum(1 for o in load.outcomes if o.kind == "chat" and o.status == 200)
    async with database.transaction(write=False) as session:
        gateway = await session.scalar(
            select(func.count()).select_from(UsageEvent).where(UsageEvent.source == "gateway")
        )
        recorded = dict(
            (
                await session.execute(
                    select(UsageEvent.event_id, UsageEvent.total_tokens).where(
                        UsageEvent.user_id == world.bob.id
                    )
                )
            ).all()
        )
        bob_used = await session.scalar(
            select(func.sum(Balance.used)).where(Balance.user_id == world.bob.id)
        )
        approved = (
            await session.execute(
                select(
                    func.count(), func.coalesce(func.sum(TokenRequest.approved_amount), 0)
                ).where(TokenRequest.user_id == world.amy.id, TokenRequest.status == "approved")
            )
        ).one()
        grants = (
            await session.execute(
                select(func.count(), func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
                    LedgerEntry.user_id == world.amy.id, LedgerEntry.kind == "grant"
                )
            )
        ).one()
    assert chats > 0 and gateway == chats, (gateway, chats, statuses)
    assert statuses.get(ReservationStatus.SETTLED.value, 0) >= chats
    assert recorded == load.reported
    assert bob_used == sum(load.reported.values())
    assert approved[0] > 1 and tuple(approved) == tuple(grants)
