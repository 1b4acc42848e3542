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
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, text, update

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine, reset_postgres
from tokendesk.accounts import service as accounts
from tokendesk.accounts.auth import build_actor
from tokendesk.accounts.models import Role, Team, User
from tokendesk.analytics import service
from tokendesk.db import Database
from tokendesk.ledger.models import Balance
from tokendesk.ledger.periods import local_midnight, period_bounds
from tokendesk.metering.models import ALL_MODELS
from tokendesk.metering.service import UsageInput, record_usage
from tokendesk.migrations.runner import upgrade

TIMEZONE = "Europe/Berlin"
# (model, share of calls, mean prompt tokens, mean completion tokens)
MODELS = [
    ("gpt-4o", 0.34, 1400, 450),
    ("gpt-4o-mini", 0.26, 900, 300),
    ("claude-sonnet", 0.18, 1800, 600),
    ("claude-haiku", 0.10, 700, 250),
    ("llama-3-70b", 0.08, 1100, 400),
    ("mistral-large", 0.04, 1200, 400),
]
ALLOCATION = 2_000_000
FLUSH_ROWS = 200_000
SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


@dataclass
class Load:
    """Everything the generator produced, ready to write."""

    events: int = 0
    users_with_usage: int = 0
    daily: int = 0
    team_daily: dict[tuple[date, int, str], list[int]] = field(default_factory=dict)
    model_daily: dict[tuple[date, str], list[int]] = field(default_factory=dict)
    series: int = 0
    cumulative: int = 0
    used_this_period: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class World:
    org_id: int
    period_start: datetime
    period_end: datetime
    users: list[tuple[int, int]]  # (user id, team id)
    admin_id: int
    owner_id: int
    owner_team: int


# ---------------------------------------------------------------- set-up through the services


async def create_world(url: str, *, users: int, teams: int, now: datetime) -> World:
    database = Database(url)
    try:
        async with database.transaction() as s:
            org = await accounts.create_organization(
                s,
                name="Bench Co",
                default_allocation=ALLOCATION,
                max_request=10_000_000,
                timezone=TIMEZONE,
                reset_day=1,
            )
            team_rows = [
                await accounts.create_team(s, organization_id=org.id, name=f"Team {n:03d}")
                for n in range(teams)
            ]
            admin = await accounts.create_user(
                s,
                organization_id=org.id,
                email="admin@bench.example",
                name="Bench Admin",
                role=Role.ORG_ADMIN,
                now=now,
            )
            people: list[tuple[int, int]] = []
            for n in range(users):
                team = team_rows[n % teams]
                user = await accounts.create_user(
                    s,
                    organization_id=org.id,
                    email=f"user{n:05d}@bench.example",
                    name=f"User {n:05d}",
                    team_id=team.id,
                    now=now,
                )
                people.append((user.id, team.id))
            owner_user = await s.get(User, people[0][0])
            assert owner_user is not None
            await accounts.add_team_owner(s, team=team_rows[0], user=owner_user)
            # Everyone has been here longer than the 90 days of usage about to be loaded.
            await s.execute(
                update(User)
                .where(User.organization_id == org.id)
                .values(created_at=now - timedelta(days=365))
            )
            start, end = period_bounds(now, reset_day=1, timezone=TIMEZONE)
            return World(org.id, start, end, people, admin.id, people[0][0], team_rows[0].id)
    finally:
        await database.dispose()


# ---------------------------------------------------------------- the generator


@dataclass(frozen=True)
class Clock:
    """Event times as integer UTC seconds: cheap to generate, converted once per backend."""

    first: int
    span: int
    # Each local day of the range with the UTC second its midnight falls on.
    days: list[date]
    starts: list[int]

    @classmethod
    def over(cls, now: datetime, days: int) -> Clock:
        tz = ZoneInfo(TIMEZONE)
        last = int(now.timestamp())
        first = last - days * 86_400
        day = datetime.fromtimestamp(first, tz).date()
        local_days, starts = [], []
        while True:
            midnight = int(local_midnight(day, tz).timestamp())
            if midnight > last:
                break
            local_days.append(day)
            starts.append(midnight)
            day += timedelta(days=1)
        return cls(first, last - first, local_days, starts)


def generate(
    world: World, *, events: int, clock: Clock, seed: int = 7
) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]], Load]]:
    """Yield (events, usage_daily rows, series and running-total rows, load so far) per user.

    Users differ a lot (a heavy tail of power users), models follow fixed shares,
    and every event lies in the clock's range. Event times are UTC seconds.
    """
    rng = random.Random(seed)
    names = [m[0] for m in MODELS]
    # 1,000 slots shared out by the models' shares: one random number picks a model.
    slots = [i for i, m in enumerate(MODELS) for _ in range(round(m[1] * 1000))]
    means = [(m[2], m[3]) for m in MODELS]
    width = len(MODELS)
    activity = [rng.lognormvariate(0, 0.8) for _ in world.users]
    scale = events / sum(activity)
    counts = [int(a * scale) for a in activity]
    counts[0] += events - sum(counts)
    period_start = int(world.period_start.timestamp())
    starts = clock.starts
    load = Load()
    event_no = 0
    series_id = 0
    for (user_id, team_id), count in zip(world.users, counts, strict=True):
        span, first, draw = clock.span, clock.first, rng.random
        times = sorted(int(draw() * span) + first for _ in range(count))
        cells = [0] * (len(clock.days) * width * 4)
        rows: list[tuple[Any, ...]] = []
        used_period = 0
        day = 0
        for when in times:
            while day + 1 < len(starts) and when >= starts[day + 1]:
                day += 1
            model = slots[int(rng.random() * len(slots))]
            mean_prompt, mean_completion = means[model]
            prompt = int(mean_prompt * (0.2 + 1.6 * rng.random()))
            completion = int(mean_completion * (0.2 + 1.6 * rng.random()))
            total = prompt + completion
            if when >= period_start:
                used_period += total
            event_no += 1
            rows.append(
                (event_no, f"b{event_no:09d}", user_id, team_id, names[model], prompt,
                 completion, total, when, ALLOCATION - used_period)
            )  # fmt: skip
            at = (day * width + model) * 4
            cells[at] += prompt
            cells[at + 1] += completion
            cells[at + 2] += total
            cells[at + 3] += 1
        load.events += count
        load.users_with_usage += bool(count)
        load.used_this_period[user_id] = used_period
        daily_rows: list[tuple[Any, ...]] = []
        per_series: dict[str, list[tuple[date, int, int]]] = defaultdict(list)
        for day_index, local in enumerate(clock.days):
            all_tokens = all_calls = 0
            for model in range(width):
                at = (day_index * width + model) * 4
                calls = cells[at + 3]
                if not calls:
                    continue
                sums = cells[at : at + 4]
                daily_rows.append((local, user_id, team_id, names[model], *sums))
                per_series[names[model]].append((local, sums[2], calls))
                all_tokens += sums[2]
                all_calls += calls
                team_cell = load.team_daily.setdefault((local, team_id, names[model]), [0] * 4)
                model_cell = load.model_daily.setdefault((local, names[model]), [0] * 4)
                for i in range(4):
                    team_cell[i] += sums[i]
                    model_cell[i] += sums[i]
            if all_calls:
                per_series[ALL_MODELS].append((local, all_tokens, all_calls))
        load.daily += len(daily_rows)
        running: list[tuple[Any, ...]] = []
        for key in sorted(per_series):
            series_id += 1
            running.append(("series", series_id, user_id, team_id, key))
            tokens = calls = 0
            for local, day_tokens, day_calls in per_series[key]:
                tokens += day_tokens
                calls += day_calls
                running.append(("row", series_id, local, tokens, calls))
            load.cumulative += len(per_series[key])
        load.series = series_id
        yield rows, daily_rows, running, load


def token_requests(
    world: World, *, count: int, days: int, now: datetime, seed: int = 11
) -> tuple[list[tuple[Any, ...]], dict[int, int]]:
    """(request rows, tokens granted this period per user): decided ones mostly, a few pending."""
    rng = random.Random(seed)
    first = now - timedelta(days=days)
    rows: list[tuple[Any, ...]] = []
    granted: dict[int, int] = defaultdict(int)
    pending: set[int] = set()
    for n in range(count):
        user_id, team_id = world.users[rng.randrange(len(world.users))]
        created = first + timedelta(seconds=rng.random() * days * 86_400)
        amount = rng.choice([100_000, 250_000, 500_000, 1_000_000])
        r = rng.random()
        recent = now - created < timedelta(days=2)
        if recent and r < 0.3 and user_id not in pending:
            pending.add(user_id)
            rows.append((n + 1, user_id, team_id, amount, None, "pending", created, None))
            continue
        decided = created + timedelta(minutes=rng.expovariate(1 / 240))
        decided = min(decided, now)
        if r < 0.75:
            approved = amount if rng.random() < 0.8 else amount // 2
            rows.append((n + 1, user_id, team_id, amount, approved, "approved", created, decided))
            if created >= world.period_start:
                granted[user_id] += approved
        elif r < 0.93:
            rows.append((n + 1, user_id, team_id, amount, None, "rejected", created, decided))
        else:
            rows.append((n + 1, user_id, team_id, amount, None, "cancelled", created, decided))
    return rows, granted


# ---------------------------------------------------------------- writers


def _sqlite_time(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).strftime(SQLITE_TIME)


def load_sqlite(path: str, world: World, args: argparse.Namespace, now: datetime) -> Load:
    db = sqlite3.connect(path)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-400000")
    org = world.org_id
    pending: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    recorded = _sqlite_time(now)

    def flush() -> None:
        db.executemany(
            "INSERT INTO usage_events (id, organization_id, event_id, user_id, team_id, model,"
            " prompt_tokens, completion_tokens, total_tokens, source, occurred_at, recorded_at,"
            " balance_after) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'bench', ?, ?, ?)",
            pending.pop("events", []),
        )
        db.executemany(
            "INSERT INTO usage_daily (organization_id, day, user_id, team_id, model,"
            " prompt_tokens, completion_tokens, total_tokens, calls)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            pending.pop("daily", []),
        )
        db.executemany(
            "INSERT INTO usage_series (id, organization_id, user_id, team_id, model)"
            " VALUES (?, ?, ?, ?, ?)",
            pending.pop("series", []),
        )
        db.executemany(
            "INSERT INTO usage_cumulative (series_id, day, tokens, calls) VALUES (?, ?, ?, ?)",
            pending.pop("cumulative", []),
        )
        db.commit()

    load = Load()
    clock = Clock.over(now, args.days)
    # SQLite keeps times as text: a UTC day's date plus one of 86,400 times of day.
    base = clock.first // 86_400
    dates = [
        datetime.fromtimestamp((base + n) * 86_400, UTC).strftime("%Y-%m-%d ")
        for n in range(args.days + 2)
    ]
    times = [f"{n // 3600:02d}:{n // 60 % 60:02d}:{n % 60:02d}.000000" for n in range(86_400)]
    for events, daily, cumulative, progress in generate(world, events=args.events, clock=clock):
        load = progress
        pending["events"].extend(
            (n, org, eid, uid, tid, m, p, c, t, dates[w // 86_400 - base] + times[w % 86_400],
             recorded, after)
            for n, eid, uid, tid, m, p, c, t, w, after in events
        )  # fmt: skip
        pending["daily"].extend((org, day.isoformat(), *rest) for day, *rest in daily)
        for row in cumulative:
            if row[0] == "series":
                pending["series"].append((row[1], org, row[2], row[3], row[4]))
            else:
                pending["cumulative"].append((row[1], row[2].isoformat(), row[3], row[4]))
        if len(pending["events"]) >= FLUSH_ROWS:
            flush()
    flush()
    db.executemany(
        "INSERT INTO usage_team_daily (organization_id, day, team_id, model, prompt_tokens,"
        " completion_tokens, total_tokens, calls) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(org, k[0].isoformat(), k[1], k[2], *v) for k, v in sorted(load.team_daily.items())],
    )
    db.executemany(
        "INSERT INTO usage_model_daily (organization_id, day, model, prompt_tokens,"
        " completion_tokens, total_tokens, calls) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(org, k[0].isoformat(), k[1], *v) for k, v in sorted(load.model_daily.items())],
    )
    requests, granted = token_requests(world, count=args.requests, days=args.days, now=now)
    db.executemany(
        "INSERT INTO token_requests (id, organization_id, user_id, team_id, amount,"
        " approved_amount, reason, status, balance_at_request, created_at, decided_at,"
        " decided_by_id) VALUES (?, ?, ?, ?, ?, ?, 'bench', ?, 0, ?, ?, ?)",
        [
            (n, org, uid, tid, amount, approved, status, _sqlite_time(created),
             _sqlite_time(decided), None if decided is None else world.admin_id)
            for n, uid, tid, amount, approved, status, created, decided in requests
        ],
    )  # fmt: skip
    _balances_sqlite(db, world, load, granted, now)
    db.commit()
    db.execute("ANALYZE")
    db.close()
    return load


def _balances_sqlite(
    db: sqlite3.Connection, world: World, load: Load, granted: dict[int, int], now: datetime
) -> None:
    start = _sqlite_time(world.period_start)
    db.executemany(
        "UPDATE balances SET used = ?, granted = ? WHERE user_id = ?",
        [(load.used_this_period[uid], granted.get(uid, 0), uid) for uid, _ in world.users],
    )
    # One ledger entry per user and kind keeps `tokendesk doctor` satisfied.
    db.executemany(
        "INSERT INTO ledger_entries (organization_id, user_id, period_start, kind, amount,"
        " reason, created_at) VALUES (?, ?, ?, ?, ?, 'bench load', ?)",
        [
            (world.org_id, uid, start, kind, amount, _sqlite_time(now))
            for uid, _ in world.users
            for kind, amount in (
                ("usage", -load.used_this_period[uid]),
                ("grant", granted.get(uid, 0)),
            )
            if amount
        ],
    )


async def load_postgres(url: str, world: World, args: argparse.Namespace, now: datetime) -> Load:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    org = world.org_id
    pending: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    columns = {
        "events": ("usage_events", ["id", "organization_id", "event_id", "user_id", "team_id",
                   "model", "prompt_tokens", "completion_tokens", "total_tokens", "source",
                   "occurred_at", "recorded_at", "balance_after"]),
        "daily": ("usage_daily", ["organization_id", "day", "user_id", "team_id", "model",
                  "prompt_tokens", "completion_tokens", "total_tokens", "calls"]),
        "series": ("usage_series", ["id", "organization_id", "user_id", "team_id", "model"]),
        "cumulative": ("usage_cumulative", ["series_id", "day", "tokens", "calls"]),
    }  # fmt: skip

    async def flush() -> None:
        for key, (table, cols) in columns.items():
            records = pending.pop(key, [])
            if records:
                await conn.copy_records_to_table(table, records=records, columns=cols)

    load = Load()
    try:
        clock = Clock.over(now, args.days)
        for events, daily, cumulative, progress in generate(world, events=args.events, clock=clock):
            load = progress
            pending["events"].extend(
                (n, org, eid, uid, tid, m, p, c, t, "bench", datetime.fromtimestamp(w, UTC), now,
                 after)
                for n, eid, uid, tid, m, p, c, t, w, after in events
            )  # fmt: skip
            pending["daily"].extend((org, *row) for row in daily)
            for row in cumulative:
                if row[0] == "series":
                    pending["series"].append((row[1], org, row[2], row[3], row[4]))
                else:
                    pending["cumulative"].append(row[1:])
            if len(pending["events"]) >= FLUSH_ROWS:
                await flush()
        await flush()
        await conn.copy_records_to_table(
            "usage_team_daily",
            records=[(org, *k, *v) for k, v in sorted(load.team_daily.items())],
            columns=["organization_id", "day", "team_id", "model", "prompt_tokens",
                     "completion_tokens", "total_tokens", "calls"],
        )  # fmt: skip
        await conn.copy_records_to_table(
            "usage_model_daily",
            records=[(org, *k, *v) for k, v in sorted(load.model_daily.items())],
            columns=["organization_id", "day", "model", "prompt_tokens", "completion_tokens",
                     "total_tokens", "calls"],
        )  # fmt: skip
        requests, granted = token_requests(world, count=args.requests, days=args.days, now=now)
        await conn.copy_records_to_table(
            "token_requests",
            records=[
                (n, org, uid, tid, amount, approved, "bench", status, 0, created, decided,
                 None if decided is None else world.admin_id)
                for n, uid, tid, amount, approved, status, created, decided in requests
            ],
            columns=["id", "organization_id", "user_id", "team_id", "amount", "approved_amount",
                     "reason", "status", "balance_at_request", "created_at", "decided_at",
                     "decided_by_id"],
        )  # fmt: skip
        await conn.executemany(
            "UPDATE balances SET used = $1, granted = $2 WHERE user_id = $3",
            [(load.used_this_period[uid], granted.get(uid, 0), uid) for uid, _ in world.users],
        )
        await conn.executemany(
            "INSERT INTO ledger_entries (organization_id, user_id, period_start, kind, amount,"
            " reason, created_at) VALUES ($1, $2, $3, $4, $5, 'bench load', $6)",
            [
                (org, uid, world.period_start, kind, amount, now)
                for uid, _ in world.users
                for kind, amount in (
                    ("usage", -load.used_this_period[uid]),
                    ("grant", granted.get(uid, 0)),
                )
                if amount
            ],
        )
        # Explicit ids bypassed the sequences; the app's next inserts must not collide.
        for table in ("usage_events", "usage_series", "token_requests"):
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                f" (SELECT max(id) FROM {table}))"
            )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return load


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
        "usage_events", "usage_daily", "usage_team_daily", "usage_model_daily", "usage_series",
        "usage_cumulative", "token_requests",
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
            for table in ("usage_daily", "usage_team_daily", "usage_model_daily"):
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


def run(backend: str, args: argparse.Namespace) -> None:
    now = datetime.now(UTC)
    if backend == "sqlite":
        path = args.db or os.path.join(tempfile.mkdtemp(prefix="tokendesk-analytics-"), "a.db")
        if os.path.exists(path):
            os.remove(path)
        url = f"sqlite+aiosqlite:///{path}"
    else:
        url = os.environ.get("TOKENDESK_BENCH_PG_URL", "")
        if not url:
            sys.exit("set TOKENDESK_BENCH_PG_URL to a PostgreSQL database this script may wipe")
        reset_postgres(url)
    print(f"\n== {backend}: {args.events:,} events, {args.users:,} users, {args.teams} teams,"
          f" {args.days} days ({machine()})")  # fmt: skip
    upgrade(url)
    started = time.perf_counter()
    world = asyncio.run(create_world(url, users=args.users, teams=args.teams, now=now))
    seeded = time.perf_counter() - started
    print(f"  organization, teams and users through the services: {seeded:.1f} s")
    started = time.perf_counter()
    if backend == "sqlite":
        load = load_sqlite(path, world, args, now)
    else:
        load = asyncio.run(load_postgres(url, world, args, now))
    loaded = time.perf_counter() - started
    print(f"  bulk load (events, rollups, requests, balances): {loaded:.1f} s"
          f" ({load.events / loaded:,.0f} events/s)")  # fmt: skip
    for table, count in asyncio.run(counts(url)).items():
        print(f"    {table:<20} {count:>12,} rows")
    if args.check:
        started = time.perf_counter()
        problems = asyncio.run(check(url, world.org_id))
        print(f"  rollups against raw totals: {problems or 'OK'}"
              f" ({time.perf_counter() - started:.1f} s)")  # fmt: skip
    print(f"  queries ({args.runs} runs each, wall time incl. Python):")
    timings = asyncio.run(time_queries(url, world, runs=args.runs, now=now))
    slow = [t.name for t in timings if t.p50 > 100]
    print(f"  slowest p50: {max(t.p50 for t in timings):.1f} ms;"
          f" over 100 ms: {', '.join(slow) if slow else 'none'}")  # fmt: skip
    ingest = asyncio.run(ingest_after_load(url, world, now))
    print(f"  one 100-event record_usage batch on the loaded database: {ingest * 1000:.0f} ms")


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
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    for backend in backends:
        run(backend, args)


if __name__ == "__main__":
    main()
