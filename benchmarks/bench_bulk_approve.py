"""Bulk approval: decide N pending requests in one API call (N = 1k, 10k, 100k).

The pending requests are bulk-loaded (users, balances, their allocation ledger
entries and requests, consistent with the ledger), then one
``POST /api/v1/token-requests/bulk`` approves them all. Afterwards ``doctor``
must find every balance equal to its ledger and every ledger and audit reference
resolved. Run:
    .venv/bin/python benchmarks/bench_bulk_approve.py [--sizes 1000,10000,100000]
Set TOKENDESK_BENCH_PG_URL (its public schema is wiped) to add PostgreSQL.

Besides the wall-clock time, the CPU seconds spent in the call by this process
(the app, in-process) and by PostgreSQL's backends are printed: on a shared
machine they move far less than the wall clock. On SQLite the app's CPU
includes the database's work. The app is measured as a running server is:
started (its lifespan has run, which freezes the long-lived heap out of the
garbage collector) and having served the pending queue once; ``--cold`` times
the app's very first call instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import analyze, cpu_seconds, machine, reset_postgres, sqlite_url
from tokendesk.db import Database


async def load(url: str, size: int) -> tuple[str, list[int]]:
    from benchmarks.pending import add_pending_members
    from tokendesk.accounts.api_keys import issue_api_key
    from tokendesk.accounts.models import Role
    from tokendesk.accounts.organizations import create_organization
    from tokendesk.accounts.users import create_user
    from tokendesk.db import Database, utcnow
    from tokendesk.ledger.periods import period_bounds
    from tokendesk.migrations.runner import upgrade_async
    from tokendesk.token_requests.models import TokenRequest

    await upgrade_async(url)
    database = Database(url)
    now = utcnow()
    async with database.transaction() as s:
        org = await create_organization(s, name="Bulk", default_allocation=100_000)
        admin = await create_user(
            s,
            organization_id=org.id,
            email="admin@bulk.example",
            name="Admin",
            role=Role.ORG_ADMIN,
        )
        _, key = await issue_api_key(s, user=admin)
        start, end = period_bounds(now, reset_day=org.reset_day, timezone=org.timezone)
        org_id, first_id = org.id, admin.id + 1
    await add_pending_members(
        database,
        organization_id=org_id,
        first_user_id=first_id,
        count=size,
        period=(start, end),
        now=now,
        email="u{}@bulk.example",
        amount=5_000,
    )
    async with database.transaction(write=False) as s:
        from sqlalchemy import select

        request_ids = list(
            (await s.scalars(select(TokenRequest.id).where(TokenRequest.status == "pending"))).all()
        )
    await database.dispose()
    return key, request_ids


async def server_cpu(database: Database) -> float:
    """CPU seconds of this database's PostgreSQL backends so far (0 on SQLite)."""
    if database.is_sqlite:
        return 0.0
    async with database.transaction(write=False) as s:
        query = text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        pids = (await s.scalars(query)).all()
    return sum(cpu_seconds(pid) or 0.0 for pid in pids)


async def approve_all(
    url: str, key: str, ids: list[int], *, cold: bool
) -> tuple[float, float, float, int]:
    """Wall seconds of the call, this process's CPU seconds in it, the backends' CPU
    seconds in it (PostgreSQL), and how many requests were decided.

    As a server would be: started (its lifespan has run, the long-lived heap frozen)
    and having served the admin the pending queue first. ``cold``: the call is the
    app's first, nothing frozen (its runtime is built, as every call needs).
    """
    from tokendesk.app import create_app
    from tokendesk.audit import service as audit
    from tokendesk.config import Settings
    from tokendesk.db import Database
    from tokendesk.events.bus import InProcessBus
    from tokendesk.ledger.doctor import check_balances, check_references

    database = Database(url, bus=InProcessBus())
    app = create_app(
        Settings(database_url=url, demo=True, scheduler_enabled=False), database=database
    )
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {key}"}
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://b", timeout=300)
        )
        await stack.enter_async_context(app.router.lifespan_context(app))
        if not cold:
            # As a server's lifespan does with the runtime it builds itself.
            gc.collect()
            gc.freeze()
            queue = await http.get("/api/v1/token-requests?status=pending", headers=headers)
            assert queue.status_code == 200, queue.text[:300]
        server_before = await server_cpu(database)
        started, cpu_started = time.perf_counter(), time.process_time()
        r = await http.post(
            "/api/v1/token-requests/bulk",
            json={"action": "approve", "ids": ids, "note": "quarter end"},
            headers=headers,
        )
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        server = await server_cpu(database) - server_before
    assert r.status_code == 200, r.text[:300]
    decided = len(r.json()["decided"])
    assert decided == len(ids), (decided, len(ids))
    async with database.transaction(write=False) as s:
        mismatches = await check_balances(s)
        dangling = await check_references(s) + await audit.check_references(s)
    assert not mismatches, mismatches[:3]
    assert not dangling, dangling
    await database.dispose()
    return seconds, cpu, server, decided


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="time the app's first call, without its startup (no warm-up, no gc.freeze)",
    )
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    backends = [("SQLite", None)]
    if os.environ.get("TOKENDESK_BENCH_PG_URL"):
        backends.append(("PostgreSQL", os.environ["TOKENDESK_BENCH_PG_URL"]))
    print(f"Machine: {machine()}\n")
    print(
        "| backend | requests | bulk approve (s) | per 1k (ms) | app CPU (s) "
        "| PostgreSQL CPU (s) | doctor |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, pg in backends:
        for size in sizes:
            if pg:
                await reset_postgres(pg)
                url = pg
            else:
                url = sqlite_url()
            key, ids = await load(url, size)
            await analyze(url)
            seconds, cpu, server, decided = await approve_all(url, key, ids, cold=args.cold)
            print(
                f"| {label} | {decided:,} | {seconds:.3f} | {seconds / decided * 1e6:.1f} "
                f"| {cpu:.3f} | {f'{server:.3f}' if pg else '—'} | clean |",
                flush=True,
            )


if __name__ == "__main__":
    asyncio.run(main())
