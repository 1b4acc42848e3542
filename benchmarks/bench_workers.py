"""Workers: ``tokendesk serve --workers 2`` against ``--workers 1`` on PostgreSQL.

Both in one sitting, in alternating rounds (``--rounds``, 2: 1, 2, 1, 2 workers),
each on a freshly wiped and seeded database (``--users`` members with tokens to
spare), before the same fast fake upstream: a warm-up of 1,000 calls, then
VACUUM ANALYZE (this machine's PostgreSQL runs with autovacuum off), then the
gateway benchmark's closed loop, ``--requests`` (20,000) chat calls over
``--concurrency`` (32) keep-alive connections, each held, settled and metered.
The load generator, the fake upstream and PostgreSQL share the machine's cores
with the workers, as they would on a small host, so their CPU seconds are printed
beside each worker's: on two cores, they are what a second worker competes with.

The server logs at ``warning``, as the gateway benchmark's does (no line a call).
The kernel hands each new connection to whichever worker accepts it first, so
the split of the work between the workers (their CPU seconds) is printed too.
Every run checks its result: tokens debited equal 24 a successful call, nothing
held, the cached balances equal to the ledger.

The ratio of the throughputs (the mean over the rounds of each) is printed against
the target, 1.6. Run:
    .venv/bin/python benchmarks/bench_workers.py [--database-url URL] [--rounds 2]
with ``--database-url`` or TOKENDESK_BENCH_PG_URL a PostgreSQL database whose public
schema may be wiped (never real data); without one it says so and does nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
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
    analyze,
    children,
    cpu_seconds,
    free_port,
    machine,
    process,
    reset_postgres,
    wait_ready,
)
from benchmarks.loadgen import LoadResult, run_load

TARGET = 1.6
WARMUP_CALLS = 1000
STARTUP_SECONDS = 60.0


@dataclass
class Run:
    workers: int
    load: LoadResult
    worker_cpu: list[float]  # seconds, one a worker
    upstream_cpu: float
    database_cpu: float
    generator_cpu: float
    check: str
    exact: bool


async def backends(url: str) -> list[int]:
    """The PostgreSQL server processes connected to ``url``'s database (the servers'
    pooled connections), not counting the one asking."""
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return [int(r["pid"]) for r in rows]


def total_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) or 0.0 for pid in pids)


async def quiet_cpu(pids: list[int]) -> list[float]:
    """Each process's CPU seconds once it has gone quiet (its settlements committed)."""
    return [await settled(pid) or 0.0 for pid in pids]


def spawned(pid: int) -> bool:
    """Whether ``pid`` is a process started by multiprocessing's spawn (a uvicorn
    worker), not its resource tracker."""
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def workers_of(server: int, count: int) -> list[int]:
    """The worker processes of ``tokendesk serve`` (itself when it serves alone), once
    all ``count`` are up."""
    if count == 1:
        return [server]
    deadline = time.monotonic() + STARTUP_SECONDS
    while len(found := [pid for pid in children(server) if spawned(pid)]) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(found)} of {count} workers started")
        time.sleep(0.1)
    return found


async def measure(
    workers: int, url: str, up_port: int, upstream_pid: int, args: argparse.Namespace
) -> Run:
    await reset_postgres(url)
    keys, _ = await seed(url, args.users)
    port = free_port()
    env = {**gateway_env(url, up_port), "TOKENDESK_LOG_LEVEL": "warning"}
    cmd = [sys.executable, "-m", "tokendesk.cli", "serve", "--workers", str(workers)]
    log = Path(tempfile.mkdtemp(prefix="tokendesk-workers-")) / "server.log"
    prepared = calls(port, keys)

    def through(n: int) -> bytes:
        return prepared[n % len(prepared)]

    with process([*cmd, "--port", str(port)], env, log=log) as server:
        pids = workers_of(server.pid, workers)
        wait_ready(f"http://127.0.0.1:{port}/readyz", timeout=STARTUP_SECONDS)
        warmup = await run_load(
            "127.0.0.1", port, through, concurrency=args.concurrency, total=WARMUP_CALLS
        )
        await analyze(url, vacuum=True)
        # The backends the warm-up opened serve the run (the pools keep them); one
        # opened later goes uncounted.
        database = await backends(url)
        before, up_before = await quiet_cpu(pids), cpu_seconds(upstream_pid) or 0.0
        db_before, generator_before = total_cpu(database), time.process_time()
        load = await run_load(
            "127.0.0.1", port, through, concurrency=args.concurrency, total=args.requests
        )
        generator_cpu = time.process_time() - generator_before
        after, up_after = await quiet_cpu(pids), cpu_seconds(upstream_pid) or 0.0
        database_cpu = total_cpu(database) - db_before
    used, reserved, mismatches = await used_total(url)
    ok = warmup.statuses.get(200, 0) + load.statuses.get(200, 0)
    exact = used == ok * TOKENS_PER_CALL and reserved == 0 and mismatches == 0
    check = (
        f"{used:,} tokens debited for {ok:,} successful calls (expected "
        f"{ok * TOKENS_PER_CALL:,}), {reserved} still held, doctor mismatches: {mismatches}"
    )
    return Run(
        workers,
        load,
        [b - a for a, b in zip(before, after, strict=True)],
        up_after - up_before,
        database_cpu,
        generator_cpu,
        check,
        exact,
    )


def row(run: Run) -> str:
    split = " + ".join(f"{cpu:.1f}" for cpu in run.worker_cpu)
    return (
        f"| {run.workers} | {run.load.requests:,} | {run.load.rps:,.0f} | {run.load.p50:.2f} | "
        f"{run.load.pct(99):.2f} | {split} | {run.upstream_cpu:.1f} | {run.database_cpu:.1f} | "
        f"{run.generator_cpu:.1f} | "
        f"{dict(sorted(run.load.statuses.items()))} |"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000, help="closed-loop calls a run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="pairs of runs, 1 then 2 workers")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("TOKENDESK_BENCH_PG_URL"),
        help="a PostgreSQL URL (postgresql+asyncpg://...) whose public schema may be wiped; "
        "default TOKENDESK_BENCH_PG_URL",
    )
    args = parser.parse_args()
    if args.requests < 1 or args.concurrency < 1 or args.users < 1 or args.rounds < 1:
        parser.error("--requests, --concurrency, --users and --rounds must be at least 1")
    url = args.database_url
    if not url:
        print("bench_workers needs PostgreSQL: set TOKENDESK_BENCH_PG_URL or --database-url")
        return
    if not url.startswith("postgresql"):
        parser.error("--database-url takes a PostgreSQL URL (postgresql+asyncpg://...)")
    print(f"Machine: {machine()}\n")
    runs: list[Run] = []
    up_port = free_port()
    with upstream(up_port) as fake:
        for n in range(args.rounds):
            for workers in (1, 2):
                run = await measure(workers, url, up_port, fake.pid, args)
                runs.append(run)
                print(
                    f"round {n + 1}, {workers} worker(s): {run.load.rps:,.0f} calls/s",
                    flush=True,
                )
    one, two = (
        statistics.mean(run.load.rps for run in runs if run.workers == workers)
        for workers in (1, 2)
    )
    ratio = two / one if one else 0.0
    print(
        "",
        f"Closed loop, {args.concurrency} connections, {args.requests:,} calls a run, "
        f"{args.users} users, {args.rounds} round(s) alternating",
        "",
        "| workers | calls | calls/s | p50 ms | p99 ms | worker CPU s | upstream CPU s | "
        "PostgreSQL CPU s | load generator CPU s | statuses |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(row(run) for run in runs),
        "",
        f"Mean throughput: {one:,.0f} calls/s with 1 worker, {two:,.0f} with 2: "
        f"{ratio:.2f}x (target {TARGET}x: {'met' if ratio >= TARGET else 'not met'})",
        "",
        *(f"- {run.workers} worker(s): {run.check}" for run in runs),
        sep="\n",
    )
    if not all(run.exact for run in runs):
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
