"""Bulk approval: decide N pending requests in one API call (N = 1k, 10k, 100k).

The pending requests are bulk-loaded (users, balances, their allocation ledger
entries and requests, consistent with the ledger), then one
``POST /api/v1/token-requests/bulk`` approves them all. Afterwards ``doctor``
must find every balance equal to its ledger and every ledger and audit reference
resolved. Run:
    .venv/bin/python benchmarks/bench_bulk_approve.py [--sizes 1000,10000,100000]
Set TOKENDESK_BENCH_PG_URL (its public schema is wiped) to add PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine, reset_postgres, sqlite_url


async def load(url: str, size: int) -> tuple[str, list[int]]:
    from benchmarks.pending import add_pending_members
    from tokendesk.accounts import service as accounts
    from tokendesk.accounts.models import Role
    from tokendesk.db import Database, utcnow
    from tokendesk.ledger.periods import period_bounds
    from tokendesk.migrations.runner import upgrade_async
    from tokendesk.token_requests.models import TokenRequest

    await upgrade_async(url)
    database = Database(url)
    now = utcnow()
    async with database.transaction() as s:
        org = await accounts.create_organization(s, name="Bulk", default_allocation=100_000)
        admin = await accounts.create_user(
            s,
            organization_id=org.id,
            email="admin@bulk.example",
            name="Admin",
            role=Role.ORG_ADMIN,
        )
        _, key = await accounts.issue_api_key(s, user=admin)
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


async def approve_all(url: str, key: str, ids: list[int]) -> tuple[float, int]:
    from tokendesk.app import create_app
    from tokendesk.audit import service as audit
    from tokendesk.config import Settings
    from tokendesk.db import configure_database, set_database
    from tokendesk.ledger.doctor import check_balances, check_references

    database = configure_database(url)
    app = create_app(
        Settings(database_url=url, demo=True, scheduler_enabled=False), manage_database=False
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://b", timeout=300) as http:
        started = time.perf_counter()
        r = await http.post(
            "/api/v1/token-requests/bulk",
            json={"action": "approve", "ids": ids, "note": "quarter end"},
            headers={"Authorization": f"Bearer {key}"},
        )
        seconds = time.perf_counter() - started
    assert r.status_code == 200, r.text[:300]
    decided = len(r.json()["decided"])
    assert decided == len(ids), (decided, len(ids))
    async with database.transaction(write=False) as s:
        mismatches = await check_balances(s)
        dangling = await check_references(s) + await audit.check_references(s)
    assert not mismatches, mismatches[:3]
    assert not dangling, dangling
    await database.dispose()
    set_database(None)
    return seconds, decided


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    backends = [("SQLite", None)]
    if os.environ.get("TOKENDESK_BENCH_PG_URL"):
        backends.append(("PostgreSQL", os.environ["TOKENDESK_BENCH_PG_URL"]))
    print(f"Machine: {machine()}\n")
    print("| backend | requests | bulk approve (s) | per 1k (ms) | doctor |")
    print("|---|---|---|---|---|")
    for label, pg in backends:
        for size in sizes:
            if pg:
                await reset_postgres(pg)
                url = pg
            else:
                url = sqlite_url()
            key, ids = await load(url, size)
            seconds, decided = await approve_all(url, key, ids)
            print(
                f"| {label} | {decided:,} | {seconds:.3f} | {seconds / decided * 1e6:.1f} "
                "| clean |",
                flush=True,
            )


if __name__ == "__main__":
    asyncio.run(main())
