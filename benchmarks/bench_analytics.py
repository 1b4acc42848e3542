"""Analytics at scale: 10 million usage events, then every analytics query, timed.

A fast bulk loader writes raw usage events and every rollup consistently
(rollups are computed from the very events generated, user by user), plus
balances, ledger entries and token requests; organization, teams and users are
created through the services. Then each analytics query runs several times and
its p50 and max wall time are printed. Target: 100 ms each.

    .venv/bin/python benchmarks/bench_analytics.py [--events 10000000] [--backend sqlite]

SQLite uses a fresh file (``--db`` to choose it). PostgreSQL uses
TOKENDESK_BENCH_PG_URL, a database this script wipes (``--backend postgres``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.analytics_data import ADMIN_EMAIL, MODELS, TIMEZONE, World, create_world
from benchmarks.analytics_load import load_postgres, load_sqlite
from benchmarks.common import machine, reset_postgres
from tokendesk.accounts.auth import build_actor
from tokendesk.accounts.models import Role, Team, User
from tokendesk.analytics import service
from tokendesk.db import Database
from tokendesk.ledger.models import Balance
from tokendesk.ledger.periods import period_bounds
from tokendesk.metering.service import UsageInput, record_usage
from tokendesk.migrations.runner import upgrade

# ---------------------------------------------------------------- timing


@dataclass
class Timing:
    name: str
    runs: list[float]
    rows: int
    # CPU seconds of this process per run: on SQLite that is all the work (the
    # driver's thread included), and it is not inflated by other processes.
    cpu: list[float] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return statistics.median(self.runs) * 1000

    @property
    def max(self) -> float:
        return max(self.runs) * 1000


async def time_queries(url: str, world: World, *, runs: int, now: datetime) -> list[Timing]:
    database = Database(url)
    timings: list[Timing] = []
    try:
        async with database.transaction(write=False) as s:
            admin_user = await s.get(User, world.admin_id)
            owner_user = await s.get(User, world.owner_id)
            assert admin_user is not None and owner_user is not None
            admin = await build_actor(s, admin_user)
            owner = await build_actor(s, owner_user)
        cases: list[tuple[str, Any, Callable[..., Awaitable[Any]], dict[str, Any]]] = [
            ("top-users, current period", admin, service.top_users, {}),
            ("top-users, last 90 days", admin, service.top_users, {"period": "90d"}),
            ("top-users, 90 days, one model", admin, service.top_users,
             {"period": "90d", "model": MODELS[0][0]}),
            ("top-users, 90 days, team owner", owner, service.top_users, {"period": "90d"}),
            ("top-teams, current period", admin, service.top_teams, {}),
            ("top-teams, last 90 days", admin, service.top_teams, {"period": "90d"}),
            ("usage-over-time by team, 90 days", admin, service.usage_over_time,
             {"period": "90d"}),
            ("usage-over-time by model, 90 days", admin, service.usage_over_time,
             {"period": "90d", "stack": "model"}),
            ("usage-over-time by team, 90 days, one model", admin, service.usage_over_time,
             {"period": "90d", "model": MODELS[1][0]}),
            ("by-model, last 90 days", admin, service.by_model, {"period": "90d"}),
            ("by-model, 90 days, team owner", owner, service.by_model, {"period": "90d"}),
            ("by-model, 90 days, one endpoint", admin, service.by_model,
             {"period": "90d", "endpoint": "responses"}),
            ("by-endpoint, last 90 days", admin, service.by_endpoint, {"period": "90d"}),
            ("by-endpoint, 90 days, team owner", owner, service.by_endpoint, {"period": "90d"}),
            ("by-endpoint, 90 days, one model", admin, service.by_endpoint,
             {"period": "90d", "model": MODELS[0][0]}),
            ("usage-over-time by endpoint, 90 days", admin, service.usage_over_time,
             {"period": "90d", "stack": "endpoint"}),
            ("requests, last 90 days", admin, service.requests, {"period": "90d"}),
            ("requests, current period", admin, service.requests, {}),
            ("forecast", admin, service.forecast, {}),
        ]  # fmt: skip
        for name, who, compute, params in cases:
            options = {k: params.pop(k) for k in ("stack",) if k in params}
            samples: list[float] = []
            cpu: list[float] = []
            size = 0
            for _ in range(runs):
                started, cpu_started = time.perf_counter(), time.process_time()
                async with database.transaction(write=False) as s:
                    selection = await service.selection_for(
                        s, actor=who, query=service.Query(**params), now=now
                    )
                    out = await compute(s, selection=selection, **options)
                samples.append(time.perf_counter() - started)
                cpu.append(time.process_time() - cpu_started)
                size = _size(out)
            timing = Timing(name, samples, size, cpu)
            timings.append(timing)
            print(
                f"  {name:<46} p50 {timing.p50:6.1f} ms  max {timing.max:6.1f} ms"
                f"  (cpu here p50 {statistics.median(cpu) * 1000:5.1f} ms)  {size} rows"
            )
    finally:
        await database.dispose()
    return timings


def _size(out: Any) -> int:
    for attr in ("items", "series", "by_status"):
        value = getattr(out, attr, None)
        if value is not None:
            return len(value)
    return 0


async def counts(url: str) -> dict[str, int]:
    database = Database(url)
    tables = [
        "usage_events", "usage_team_daily", "usage_model_daily", "usage_team_endpoint_daily",
        "usage_endpoint_daily", "usage_series", "usage_cumulative", "token_requests",
    ]  # fmt: skip
    try:
        async with database.transaction(write=False) as s:
            return {t: int(await s.scalar(text(f"SELECT count(*) FROM {t}")) or 0) for t in tables}
    finally:
        await database.dispose()


async def check(url: str, org_id: int) -> list[str]:
    """Totals of the raw events against every rollup (one pass over the raw table)."""
    database = Database(url)
    problems: list[str] = []
    try:
        async with database.transaction(write=False) as s:
            raw = await s.scalar(text("SELECT sum(total_tokens) FROM usage_events"))
            for table in (
                "usage_team_daily",
                "usage_model_daily",
                "usage_team_endpoint_daily",
                "usage_endpoint_daily",
            ):
                value = await s.scalar(text(f"SELECT sum(total_tokens) FROM {table}"))
                if value != raw:
                    problems.append(f"{table}: {value} != raw {raw}")
            last = await s.scalar(
                text(
                    "SELECT sum(c.tokens) FROM usage_cumulative c JOIN usage_series s"
                    " ON s.id = c.series_id WHERE s.model = '' AND c.day ="
                    " (SELECT max(day) FROM usage_cumulative WHERE series_id = c.series_id)"
                )
            )
            if last != raw:
                problems.append(f"running totals: {last} != raw {raw}")
            used = await s.scalar(
                select(func.sum(Balance.used)).where(Balance.organization_id == org_id)
            )
            if not used:
                problems.append("no usage this period")
    finally:
        await database.dispose()
    return problems


async def ingest_after_load(url: str, world: World, now: datetime) -> float:
    """Seconds for one 100-event batch through record_usage on the loaded database."""
    database = Database(url)
    rng = random.Random(3)
    try:
        batch = [
            UsageInput(
                event_id=f"after-{n}",
                user_id=world.users[rng.randrange(len(world.users))][0],
                model=MODELS[n % len(MODELS)][0],
                prompt_tokens=800,
                completion_tokens=200,
                occurred_at=now - timedelta(minutes=n),
            )
            for n in range(100)
        ]
        started = time.perf_counter()
        async with database.transaction() as s:
            await record_usage(s, organization_id=world.org_id, events=batch, now=now)
        seconds = time.perf_counter() - started
        async with database.transaction(write=False) as s:
            assert await s.scalar(select(func.count()).select_from(Team)) is not None
        return seconds
    finally:
        await database.dispose()


# ---------------------------------------------------------------- main


def _url(backend: str, args: argparse.Namespace, *, fresh: bool) -> str:
    if backend == "sqlite":
        path = args.db or os.path.join(tempfile.mkdtemp(prefix="tokendesk-analytics-"), "a.db")
        if fresh and os.path.exists(path):
            os.remove(path)
        return f"sqlite+aiosqlite:///{path}"
    url = os.environ.get("TOKENDESK_BENCH_PG_URL", "")
    if not url:
        sys.exit("set TOKENDESK_BENCH_PG_URL to a PostgreSQL database this script may wipe")
    if fresh:
        asyncio.run(reset_postgres(url))
    return url


async def existing_world(url: str) -> World:
    """The world an earlier run loaded (``--time-only``)."""
    database = Database(url)
    try:
        async with database.transaction(write=False) as s:
            admin = await s.scalar(select(User).where(User.email == ADMIN_EMAIL))
            if admin is None:
                sys.exit("no benchmark data in this database: run without --time-only first")
            owner = await s.scalar(select(User).where(User.role == Role.TEAM_OWNER.value))
            assert owner is not None and owner.team_id is not None
            users = await s.execute(
                select(User.id, User.team_id).where(User.organization_id == admin.organization_id)
            )
            now = datetime.now(UTC)
            start, end = period_bounds(now, reset_day=1, timezone=TIMEZONE)
            return World(
                admin.organization_id,
                start,
                end,
                [(uid, tid) for uid, tid in users if tid is not None],
                admin.id,
                owner.id,
                owner.team_id,
            )
    finally:
        await database.dispose()


def run(backend: str, args: argparse.Namespace) -> None:
    now = datetime.now(UTC)
    url = _url(backend, args, fresh=not args.time_only)
    print(f"\n== {backend}: {args.events:,} events, {args.users:,} users, {args.teams} teams,"
          f" {args.days} days ({machine()})")  # fmt: skip
    world = asyncio.run(existing_world(url)) if args.time_only else load(backend, url, args, now)
    print(f"  queries ({args.runs} runs each, wall time incl. Python):")
    timings = asyncio.run(time_queries(url, world, runs=args.runs, now=now))
    slow = [t.name for t in timings if t.p50 > 100]
    print(f"  slowest p50: {max(t.p50 for t in timings):.1f} ms;"
          f" over 100 ms: {', '.join(slow) if slow else 'none'}")  # fmt: skip
    if not args.time_only:
        ingest = asyncio.run(ingest_after_load(url, world, now))
        print(f"  one 100-event record_usage batch on the loaded database: {ingest * 1000:.0f} ms")


def load(backend: str, url: str, args: argparse.Namespace, now: datetime) -> World:
    upgrade(url)
    started = time.perf_counter()
    world = asyncio.run(create_world(url, users=args.users, teams=args.teams, now=now))
    seeded = time.perf_counter() - started
    print(f"  organization, teams and users through the services: {seeded:.1f} s")
    started = time.perf_counter()
    if backend == "sqlite":
        loaded = load_sqlite(url.removeprefix("sqlite+aiosqlite:///"), world, args, now)
    else:
        loaded = asyncio.run(load_postgres(url, world, args, now))
    seconds = time.perf_counter() - started
    print(f"  bulk load (events, rollups, requests, balances): {seconds:.1f} s"
          f" ({loaded.events / seconds:,.0f} events/s)")  # fmt: skip
    for table, count in asyncio.run(counts(url)).items():
        print(f"    {table:<20} {count:>12,} rows")
    if args.check:
        started = time.perf_counter()
        problems = asyncio.run(check(url, world.org_id))
        print(f"  rollups against raw totals: {problems or 'OK'}"
              f" ({time.perf_counter() - started:.1f} s)")  # fmt: skip
    return world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--teams", type=int, default=100)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="sqlite")
    parser.add_argument("--db", help="SQLite file to (re)create; default: a temporary one")
    parser.add_argument("--no-check", dest="check", action="store_false")
    parser.add_argument(
        "--time-only",
        action="store_true",
        help="time the queries on the data an earlier run loaded (same --db or PG URL)",
    )
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    for backend in backends:
        run(backend, args)


if __name__ == "__main__":
    main()
