"""Bulk writers of the analytics benchmark: raw events and rollups in one pass, per backend.

SQLite gets executemany on a plain sqlite3 connection; PostgreSQL gets COPY through
asyncpg. Both write the rollups the generator computed from the same events.
"""

from __future__ import annotations

import argparse
import sqlite3
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from benchmarks.analytics_data import Clock, Load, World, generate, token_requests

FLUSH_ROWS = 200_000
SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


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
            " prompt_tokens, completion_tokens, total_tokens, source, occurred_at, day,"
            " recorded_at, balance_after, endpoint, cached_tokens, reasoning_tokens)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'bench', ?, ?, ?, ?, ?, ?, ?)",
            pending.pop("events", []),
        )
        db.executemany(
            "INSERT INTO usage_series (id, organization_id, user_id, team_id, model, first_day,"
            " last_day, tokens, calls) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
    for events, cumulative, progress in generate(world, events=args.events, clock=clock):
        load = progress
        pending["events"].extend(
            (n, org, eid, uid, tid, m, p, c, t, dates[w // 86_400 - base] + times[w % 86_400],
             day.isoformat(), recorded, after, ep, ca, r)
            for n, eid, uid, tid, m, p, c, t, w, after, day, ep, ca, r in events
        )  # fmt: skip
        for row in cumulative:
            if row[0] == "series":
                _, sid, uid, tid, model, first, last, tokens, calls = row
                pending["series"].append(
                    (sid, org, uid, tid, model, first.isoformat(), last.isoformat(), tokens, calls)
                )
            else:
                pending["cumulative"].append((row[1], row[2].isoformat(), row[3], row[4]))
        if len(pending["events"]) >= FLUSH_ROWS:
            flush()
    flush()
    sums = "prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, total_tokens, calls"
    db.executemany(
        f"INSERT INTO usage_team_daily (organization_id, day, team_id, model, {sums})"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(org, k[0].isoformat(), k[1], k[2], *v) for k, v in sorted(load.team_daily.items())],
    )
    db.executemany(
        f"INSERT INTO usage_model_daily (organization_id, day, model, {sums})"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(org, k[0].isoformat(), k[1], *v) for k, v in sorted(load.model_daily.items())],
    )
    for table, keys, cells in (
        ("usage_team_endpoint_daily", "team_id, model, endpoint", load.team_endpoint_daily),
        ("usage_endpoint_daily", "model, endpoint", load.endpoint_daily),
    ):
        places = ", ".join("?" * (2 + keys.count(",") + 1 + 6))
        db.executemany(
            f"INSERT INTO {table} (organization_id, day, {keys}, {sums}) VALUES ({places})",
            [(org, k[0].isoformat(), *k[1:], *v) for k, v in sorted(cells.items())],
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
                   "occurred_at", "day", "recorded_at", "balance_after", "endpoint",
                   "cached_tokens", "reasoning_tokens"]),
        "series": ("usage_series", ["id", "organization_id", "user_id", "team_id", "model",
                   "first_day", "last_day", "tokens", "calls"]),
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
        for events, cumulative, progress in generate(world, events=args.events, clock=clock):
            load = progress
            pending["events"].extend(
                (n, org, eid, uid, tid, m, p, c, t, "bench", datetime.fromtimestamp(w, UTC), day,
                 now, after, ep, ca, r)
                for n, eid, uid, tid, m, p, c, t, w, after, day, ep, ca, r in events
            )  # fmt: skip
            for row in cumulative:
                if row[0] == "series":
                    pending["series"].append((row[1], org, *row[2:]))
                else:
                    pending["cumulative"].append(row[1:])
            if len(pending["events"]) >= FLUSH_ROWS:
                await flush()
        await flush()
        sums = ["prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens",
                "total_tokens", "calls"]  # fmt: skip
        for table, keys, rows in (
            ("usage_team_daily", ["team_id", "model"], load.team_daily),
            ("usage_model_daily", ["model"], load.model_daily),
            (
                "usage_team_endpoint_daily",
                ["team_id", "model", "endpoint"],
                load.team_endpoint_daily,
            ),
            ("usage_endpoint_daily", ["model", "endpoint"], load.endpoint_daily),
        ):
            await conn.copy_records_to_table(
                table,
                records=[(org, *k, *v) for k, v in sorted(rows.items())],
                columns=["organization_id", "day", *keys, *sums],
            )
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
