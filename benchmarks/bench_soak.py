"""Soak: the gateway at a steady rate for a long while, watching for slow leaks.

One tokendesk server before the fast fake upstream takes chat calls from
``--users`` members (every call held, settled and metered) at a steady offered
rate, ``--rate`` (500) calls per second, for ``--minutes`` (10), over
``--concurrency`` (32) keep-alive connections: the open loop of the gateway
benchmark (benchmarks/bench_gateway.py), run as back-to-back windows of
``--window`` (10) seconds. Each window reports its latencies (a call counts from
when it was due, so falling behind shows), the server's resident memory at its
end and the holds open in the database halfway through it.

The verdict at the end:

- the rate: every window answered at least 95% of the offered calls per second
  (each window starts its schedule afresh, so a server that cannot keep up shows
  here rather than as a backlog carried from window to window);
- memory: the RSS of the last window is less than 10% above the first window's
  (taken after a warm-up of 1,000 calls, so start-up allocations and the first
  settlements' caches are in the baseline, not counted as growth);
- holds: the mean of the open holds in the last third of the windows is at most
  the first third's plus 10 (holds in flight at a steady rate are a handful; a
  leak of one call in a hundred at 500 calls/s adds 50 a window);
- p99: the median p99 of the last third of the windows is at most 1.5 times the
  first third's plus 2 ms (the median of windows, so one noisy window on a shared
  machine is not a drift, and the 2 ms, so a p99 of a few milliseconds may jitter);
- every call debited exactly (the fake upstream reports 24 tokens a call), nothing
  held once the server has stopped, no warning or error in the server's log (kept
  in a file at the default level, a line a call, as in production) and
  ``tokendesk doctor`` clean.

The first four are targets, reported met or not (on a shared machine a p99 may
drift for its neighbours' reasons); the rest are checks of correctness, and the
script exits 1 if one fails. SQLite by default (a fresh file); ``--database-url``
runs it on PostgreSQL (its public schema is wiped: never point it at real data).
Run: make bench, or
    .venv/bin/python benchmarks/bench_soak.py [--rate 500] [--minutes 10] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_gateway import (
    TOKENS_PER_CALL,
    calls,
    gateway_env,
    seed,
    settled,
    upstream,
    used_total,
)
from benchmarks.common import (
    ROOT,
    analyze,
    free_port,
    machine,
    process,
    reset_postgres,
    rss_bytes,
    sqlite_url,
    tokendesk_server,
    wait_ready,
)
from benchmarks.loadgen import LoadResult, run_load

WARMUP_CALLS = 1000
KEPT_UP = 0.95
RSS_GROWTH = 0.10
HOLDS_SLACK = 10
P99_FACTOR, P99_SLACK_MS = 1.5, 2.0
TROUBLE = re.compile(r" (WARNING|ERROR|CRITICAL) |Traceback")


@dataclass
class Window:
    ends_at: float  # seconds since the soak began
    load: LoadResult
    rss: int | None
    holds: int


async def open_holds(url: str) -> int:
    from sqlalchemy import func, select

    from tokendesk.db import Database
    from tokendesk.ledger.models import Reservation, ReservationStatus

    database = Database(url)
    try:
        async with database.transaction(write=False) as s:
            count = await s.scalar(
                select(func.count())
                .select_from(Reservation)
                .where(Reservation.status == ReservationStatus.HELD)
            )
    finally:
        await database.dispose()
    return int(count or 0)


async def holds_at(url: str, delay: float) -> int:
    await asyncio.sleep(delay)
    return await open_holds(url)


def doctor(url: str) -> tuple[bool, str]:
    done = subprocess.run(
        [sys.executable, "-m", "tokendesk.cli", "doctor"],
        env={**os.environ, "TOKENDESK_DATABASE_URL": url, "TOKENDESK_DEMO": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done.returncode == 0, (done.stdout + done.stderr).strip()


def thirds(values: list[float]) -> tuple[list[float], list[float]]:
    """The first and the last third of ``values`` (at least one each)."""
    k = max(1, len(values) // 3)
    return values[:k], values[-k:]


def mb(n: int | None) -> str:
    return f"{n / 2**20:,.0f}" if n is not None else "?"


async def soak(db_url: str, args: argparse.Namespace) -> bool:
    keys, _ = await seed(db_url, args.users)
    up_port, td_port = free_port(), free_port()
    env = gateway_env(db_url, up_port)
    prepared = calls(td_port, keys)

    def through(n: int) -> bytes:
        return prepared[n % len(prepared)]

    windows: list[Window] = []
    count = max(1, math.ceil(args.minutes * 60 / args.window))
    per_window = max(1, round(args.rate * args.window))
    log = Path(tempfile.mkdtemp(prefix="tokendesk-soak-")) / "server.log"
    print(f"Server log: {log}\n")
    server_cmd = tokendesk_server(td_port, env)
    with upstream(up_port), process(server_cmd, env, log=log) as server:
        wait_ready(f"http://127.0.0.1:{td_port}/healthz")
        warmup = await run_load(
            "127.0.0.1", td_port, through, concurrency=args.concurrency, total=WARMUP_CALLS
        )
        await analyze(db_url)
        began = time.perf_counter()
        for n in range(count):
            load, holds = await asyncio.gather(
                run_load(
                    "127.0.0.1",
                    td_port,
                    through,
                    concurrency=args.concurrency,
                    total=per_window,
                    rate=args.rate,
                    max_seconds=args.window * 3,
                ),
                holds_at(db_url, args.window / 2),
            )
            window = Window(time.perf_counter() - began, load, rss_bytes(server.pid), holds)
            windows.append(window)
            print(
                f"window {n + 1}/{count}: {load.requests} calls, p99 {load.pct(99):.2f} ms, "
                f"RSS {mb(window.rss)} MB, {holds} open holds",
                flush=True,
            )
        await settled(server.pid)
    used, reserved, _ = await used_total(db_url)
    held = await open_holds(db_url)
    doctor_ok, doctor_said = doctor(db_url)
    troubles = [
        line for line in log.read_text(errors="replace").splitlines() if TROUBLE.search(line)
    ]

    ok = warmup.statuses.get(200, 0) + sum(w.load.statuses.get(200, 0) for w in windows)
    first_rss, last_rss = windows[0].rss, windows[-1].rss
    growth = (last_rss - first_rss) / first_rss if first_rss and last_rss else math.inf
    early_holds, late_holds = thirds([float(w.holds) for w in windows])
    early_p99, late_p99 = thirds([w.load.pct(99) for w in windows])
    holds_limit = statistics.mean(early_holds) + HOLDS_SLACK
    p99_limit = statistics.median(early_p99) * P99_FACTOR + P99_SLACK_MS
    slowest = min(w.load.rps for w in windows)
    targets = [
        (
            slowest >= args.rate * KEPT_UP,
            f"kept up: the slowest window did {slowest:,.0f} calls/s of the {args.rate:,.0f} "
            f"offered (limit {KEPT_UP:.0%})",
        ),
        (
            growth < RSS_GROWTH,
            f"server RSS {mb(first_rss)} MB after the first window, {mb(last_rss)} MB after "
            f"the last: {growth:+.1%} (limit {RSS_GROWTH:+.0%})",
        ),
        (
            statistics.mean(late_holds) <= holds_limit,
            f"open holds: mean {statistics.mean(early_holds):.1f} in the first third of the "
            f"windows, {statistics.mean(late_holds):.1f} in the last (limit {holds_limit:.1f})",
        ),
        (
            statistics.median(late_p99) <= p99_limit,
            f"p99: median {statistics.median(early_p99):.2f} ms in the first third of the "
            f"windows, {statistics.median(late_p99):.2f} ms in the last (limit {p99_limit:.2f})",
        ),
    ]
    checks = [
        (
            used == ok * TOKENS_PER_CALL,
            f"debited {used:,} tokens for {ok:,} successful calls "
            f"(expected {ok * TOKENS_PER_CALL:,})",
        ),
        (
            reserved == 0 and held == 0,
            f"after the server stopped: {reserved} tokens in {held} holds still held",
        ),
        (
            not troubles,
            f"server log: {len(troubles)} warnings or errors"
            + (f", the first: {troubles[0]}" if troubles else ""),
        ),
        (doctor_ok, f"tokendesk doctor: {doctor_said.splitlines()[-1] if doctor_said else '?'}"),
    ]
    statuses: dict[int, int] = {}
    for w in windows:
        for status, n in w.load.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
    print(
        "",
        f"{args.rate:,.0f} calls/s offered for {windows[-1].ends_at:,.0f} s over "
        f"{args.concurrency} connections, {args.users} users, windows of {args.window:.0f} s",
        "",
        "| window | ends at s | calls | calls/s | p50 ms | p99 ms | server RSS MB | open holds |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {n} | {w.ends_at:,.0f} | {w.load.requests:,} | {w.load.rps:,.0f} | "
            f"{w.load.p50:.2f} | {w.load.pct(99):.2f} | {mb(w.rss)} | {w.holds} |"
            for n, w in enumerate(windows, 1)
        ),
        "",
        f"Statuses: {dict(sorted(statuses.items()))}",
        "",
        *(f"- {'met' if met else 'NOT MET'}: {what}" for met, what in targets),
        *(f"- {'PASS' if passed else 'FAIL'}: {what}" for passed, what in checks),
        sep="\n",
    )
    return all(passed for passed, _ in checks)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=500.0, help="offered calls per second")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=10.0, help="seconds per sample")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL URL (postgresql+asyncpg://...) whose public schema may be wiped; "
        "default a fresh SQLite file",
    )
    args = parser.parse_args()
    if args.rate <= 0 or args.minutes <= 0 or args.window <= 0:
        parser.error("--rate, --minutes and --window must be above 0")
    if args.database_url and not args.database_url.startswith("postgresql"):
        parser.error("--database-url takes a PostgreSQL URL (postgresql+asyncpg://...)")
    url = args.database_url or sqlite_url()
    if args.database_url:
        await reset_postgres(url)
    print(f"Machine: {machine()}; {'PostgreSQL' if args.database_url else 'SQLite'}\n")
    if not await soak(url, args):
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
