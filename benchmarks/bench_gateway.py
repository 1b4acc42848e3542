"""Gateway overhead: direct to a fast fake upstream vs through tokendesk with budgets enforced.

Both runs happen in one invocation, at the same concurrency, with the same load
generator, so the ratio is meaningful on a noisy machine. Run: make bench, or
    .venv/bin/python benchmarks/bench_gateway.py [--requests N] [--concurrency C]
Set TOKENDESK_BENCH_PG_URL to a PostgreSQL URL (its public schema is wiped) to add PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    free_port,
    machine,
    process,
    reset_postgres,
    sqlite_url,
    tokendesk_server,
    wait_ready,
)
from benchmarks.loadgen import LoadResult, build_request, run_load

BODY = json.dumps(
    {"model": "fast", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 50}
).encode()


async def seed(url: str, users: int) -> list[str]:
    from tokendesk.accounts import service as accounts
    from tokendesk.db import Database
    from tokendesk.migrations.runner import upgrade_async

    await upgrade_async(url)
    database = Database(url)
    keys = []
    async with database.transaction() as s:
        org = await accounts.create_organization(s, name="Bench", default_allocation=10**12)
        for n in range(users):
            user = await accounts.create_user(
                s, organization_id=org.id, email=f"user{n}@bench.example", name=f"User {n}"
            )
            _, key = await accounts.issue_api_key(s, user=user)
            keys.append(key)
    await database.dispose()
    return keys


async def used_total(url: str) -> tuple[int, int, int]:
    from sqlalchemy import func, select

    from tokendesk.db import Database
    from tokendesk.ledger.doctor import check_balances
    from tokendesk.ledger.models import Balance

    database = Database(url)
    async with database.transaction(write=False) as s:
        used = await s.scalar(select(func.sum(Balance.used)))
        reserved = await s.scalar(select(func.sum(Balance.reserved)))
        mismatches = len(await check_balances(s))
    await database.dispose()
    return int(used or 0), int(reserved or 0), mismatches


def line(name: str, r: LoadResult) -> str:
    return (
        f"| {name} | {r.requests} | {r.rps:,.0f} | {r.p50:.2f} | {r.pct(99):.2f} | "
        f"{dict(sorted(r.statuses.items()))} |"
    )


async def measure(label: str, db_url: str, args: argparse.Namespace) -> list[str]:
    keys = await seed(db_url, args.users)
    up_port, td_port = free_port(), free_port()
    upstream_cmd = [sys.executable, "tests/fake_upstream.py", "--port", str(up_port)]
    models = json.dumps([{"name": "fast", "base_url": f"http://127.0.0.1:{up_port}/v1"}])
    env = {
        "TOKENDESK_DATABASE_URL": db_url,
        "TOKENDESK_DEMO": "1",
        "TOKENDESK_MODELS": models,
        "TOKENDESK_SCHEDULER_ENABLED": "0",
    }
    with process(upstream_cmd), process(tokendesk_server(td_port, env), env):
        wait_ready(f"http://127.0.0.1:{up_port}/v1/models")
        wait_ready(f"http://127.0.0.1:{td_port}/healthz")

        def direct(n: int) -> bytes:
            return build_request("127.0.0.1", up_port, "/v1/chat/completions", BODY, {})

        prepared = [
            build_request(
                "127.0.0.1",
                td_port,
                "/v1/chat/completions",
                BODY,
                {"Authorization": f"Bearer {key}"},
            )
            for key in keys
        ]

        def through(n: int) -> bytes:
            return prepared[n % len(prepared)]

        c = args.concurrency
        await run_load("127.0.0.1", up_port, direct, concurrency=c, total=1000)
        await run_load("127.0.0.1", td_port, through, concurrency=c, total=1000)
        d = await run_load("127.0.0.1", up_port, direct, concurrency=c, total=args.requests)
        t = await run_load("127.0.0.1", td_port, through, concurrency=c, total=args.requests)
        await asyncio.sleep(1.0)  # let the settler commit the tail
    used, reserved, mismatches = await used_total(db_url)
    ok = t.statuses.get(200, 0) + 1000
    rows = [
        f"### {label} ({args.requests} requests, concurrency {c}, {args.users} users)",
        "",
        "| path | requests | req/s | p50 ms | p99 ms | statuses |",
        "|---|---|---|---|---|---|",
        line("direct to upstream", d),
        line("through tokendesk", t),
        "",
        f"Added latency: p50 {t.p50 - d.p50:+.2f} ms, p99 {t.pct(99) - d.pct(99):+.2f} ms. "
        f"Check: {used} tokens debited for {ok} successful calls "
        f"(expected {ok * 24}), {reserved} still held, doctor mismatches: {mismatches}.",
        "",
    ]
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--users", type=int, default=200)
    args = parser.parse_args()
    print(f"Machine: {machine()}\n")
    out = await measure("SQLite", sqlite_url(), args)
    pg = os.environ.get("TOKENDESK_BENCH_PG_URL")
    if pg:
        await reset_postgres(pg)
        out += await measure("PostgreSQL", pg, args)
    print("\n".join(out))


if __name__ == "__main__":
    asyncio.run(main())
