"""Gateway overhead: direct to a fast fake upstream vs through tokendesk with budgets enforced.

Every run is made twice in one invocation, straight to the fake upstream and
through tokendesk (every call held, settled and metered), with the same load
generator, so the differences are meaningful on a noisy machine:

1. Capacity: a closed loop at ``--concurrency`` (32) connections. This gives
   requests per second. Its latencies are mostly queueing: in a closed loop
   latency is about concurrency / throughput (Little's law), so at 32
   connections even an ideal 2 ms would need 16,000 requests per second. Read
   them as a consequence of the throughput, not as the gateway's overhead.
2. Added latency below saturation: an open loop at the same 32 connections with
   a fixed offered rate, ``--paced`` (25% and 50%) of the capacity just measured
   through tokendesk, and at fixed rates, ``--rates`` (500 and 1,000 requests/s,
   the target throughput), which compare across runs and machines of different
   speed; each also direct. A request counts from when it was due, so falling
   behind shows. The p50 / p99 difference is the gateway's overhead at a
   realistic load. A call costs the server more CPU at a lower rate
   (fewer calls share each settlement, and each reply wakes a sleeping client),
   so half the closed-loop rate is not half the CPU.
3. Added latency alone: one connection, one call at a time.
5. Streamed calls, chat beside Responses and Messages (``--stream-requests`` each,
   at ``--stream-concurrency`` connections): the added latency to the first
   streamed event and streamed calls per second, direct and through tokendesk, on
   ``/v1/chat/completions``, ``/v1/responses`` and ``/v1/messages`` (an Anthropic
   upstream) in the same run.
4. Refused calls: the closed loop again, from members whose balance is spent
   (every call answered 429 ``insufficient_quota``), ``--refused-requests`` of
   them: refused calls per second and the server's CPU per refusal, next to the
   served calls of run 1. A client that is out of tokens and retries its 429s
   should cost the server no more than one that pays.

The server's own CPU time per request (from /proc, user + system) is printed for
each run through tokendesk: unlike wall-clock figures it barely moves when other
work shares the machine. Run: make bench, or
    .venv/bin/python benchmarks/bench_gateway.py [--requests N] [--concurrency C]
Set TOKENDESK_BENCH_PG_URL to a PostgreSQL URL (its public schema is wiped) to add PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    analyze,
    cpu_seconds,
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
TOKENS_PER_CALL = 24  # what the fake upstream reports


async def seed(url: str, users: int) -> tuple[list[str], list[str]]:
    """API keys of ``users`` members with tokens to spare, and of as many with none."""
    from tokendesk.accounts.api_keys import issue_api_key
    from tokendesk.accounts.organizations import create_organization
    from tokendesk.accounts.users import create_user
    from tokendesk.db import Database
    from tokendesk.migrations.runner import upgrade_async

    await upgrade_async(url)
    database = Database(url)
    keys: list[str] = []
    spent: list[str] = []
    async with database.transaction() as s:
        org = await create_organization(s, name="Bench", default_allocation=10**12)
        for n in range(2 * users):
            user = await create_user(
                s,
                organization_id=org.id,
                email=f"user{n}@bench.example",
                name=f"User {n}",
                allocation_override=None if n < users else 0,
            )
            _, key = await issue_api_key(s, user=user)
            (keys if n < users else spent).append(key)
    await database.dispose()
    return keys, spent


@contextmanager
def upstream(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """The fake upstream (tests/fake_upstream.py) on ``port``, once it answers."""
    with process([sys.executable, "tests/fake_upstream.py", "--port", str(port)]) as proc:
        wait_ready(f"http://127.0.0.1:{port}/v1/models")
        yield proc


def gateway_env(db_url: str, up_port: int) -> dict[str, str]:
    """A tokendesk server's settings: ``db_url``, the fake upstream on ``up_port`` as
    model ``fast`` (chat and Responses) and ``claude`` (Messages), no scheduler."""
    models = json.dumps(
        [
            {"name": "fast", "base_url": f"http://127.0.0.1:{up_port}/v1", "apis": STREAMED_APIS},
            # Anthropic's Messages API: the upstream's base without /v1, its own key header.
            {
                "name": "claude",
                "api": "anthropic",
                "base_url": f"http://127.0.0.1:{up_port}",
                "api_key": ANTHROPIC_KEY,
            },
        ]
    )
    return {
        "TOKENDESK_DATABASE_URL": db_url,
        "TOKENDESK_DEMO": "1",
        "TOKENDESK_MODELS": models,
        "TOKENDESK_SCHEDULER_ENABLED": "0",
    }


def calls(port: int, keys: list[str]) -> list[bytes]:
    """One prepared chat call (``BODY``) to tokendesk on ``port`` per API key."""
    return [
        build_request(
            "127.0.0.1", port, "/v1/chat/completions", BODY, {"Authorization": f"Bearer {key}"}
        )
        for key in keys
    ]


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


async def settled(pid: int, *, quiet: float = 0.5, limit: float = 60.0) -> float | None:
    """The server's CPU seconds once it has gone quiet (its settlements committed), so
    each run starts from the same state and is charged for all the work it caused."""
    last = cpu_seconds(pid)
    deadline = time.monotonic() + limit
    while last is not None and time.monotonic() < deadline:
        await asyncio.sleep(quiet)
        now = cpu_seconds(pid)
        if now is None or now - last < quiet * 0.05:
            return now
        last = now
    return last


def row(run: str, path: str, r: LoadResult, cpu_ms: float | None = None) -> str:
    cpu = f"{cpu_ms:.2f}" if cpu_ms is not None else ""
    return (
        f"| {run} | {path} | {r.requests} | {r.rps:,.0f} | {r.p50:.2f} | {r.pct(99):.2f} | "
        f"{cpu} | {dict(sorted(r.statuses.items()))} |"
    )


def added(run: str, direct: LoadResult, through: LoadResult) -> str:
    return (
        f"- {run}: added p50 {through.p50 - direct.p50:+.2f} ms, "
        f"p99 {through.pct(99) - direct.pct(99):+.2f} ms"
    )


async def measure(label: str, db_url: str, args: argparse.Namespace) -> list[str]:
    keys, spent = await seed(db_url, args.users)
    up_port, td_port = free_port(), free_port()
    env = gateway_env(db_url, up_port)
    with upstream(up_port), process(tokendesk_server(td_port, env), env) as server:
        wait_ready(f"http://127.0.0.1:{td_port}/healthz")
        direct_request = build_request("127.0.0.1", up_port, "/v1/chat/completions", BODY, {})
        prepared, refusing = (calls(td_port, group) for group in (keys, spent))

        def direct(n: int) -> bytes:
            return direct_request

        def through(n: int) -> bytes:
            return prepared[n % len(prepared)]

        def refused(n: int) -> bytes:
            return refusing[n % len(refusing)]

        async def charged(make: Any, **load: Any) -> tuple[LoadResult, float | None]:
            """A load through tokendesk, with the server's CPU milliseconds per request."""
            before = await settled(server.pid)
            t = await run_load("127.0.0.1", td_port, make, **load)
            after = await settled(server.pid)
            if before is None or after is None or not t.requests:
                return t, None
            return t, (after - before) * 1000 / t.requests

        async def pair(**load: Any) -> tuple[LoadResult, LoadResult, float | None]:
            """The same load direct and through tokendesk, with the server's CPU
            milliseconds per request through it."""
            d = await run_load("127.0.0.1", up_port, direct, **load)
            t, cpu = await charged(through, **load)
            return d, t, cpu

        c = args.concurrency
        await run_load("127.0.0.1", up_port, direct, concurrency=c, total=1000)
        await run_load("127.0.0.1", td_port, through, concurrency=c, total=1000)
        await run_load("127.0.0.1", td_port, refused, concurrency=c, total=1000)
        await analyze(db_url)
        d, t, t_cpu = await pair(concurrency=c, total=args.requests)
        r, r_cpu = await charged(refused, concurrency=c, total=args.refused_requests)
        paced_runs = []
        offered = [(t.rps * share, f"{share:.0%}") for share in args.paced]
        offered += [(rate, "fixed") for rate in args.rates]
        for rate, share in offered:
            paced_total = max(1, int(rate * args.paced_seconds))
            pd, pt, pt_cpu = await pair(concurrency=c, total=paced_total, rate=rate)
            paced_runs.append((f"paced {rate:,.0f}/s ({share}), {c} connections", pd, pt, pt_cpu))
        sd, st, st_cpu = await pair(concurrency=1, total=args.single_requests)
        streams = {
            path: (
                await stream_load(up_port, path, body, None, args),
                await stream_load(td_port, path, body, keys, args),
            )
            for path, body in STREAM_BODIES.items()
        }
    used, reserved, mismatches = await used_total(db_url)
    ok = 1000 + sum(r.statuses.get(200, 0) for r in (t, st, *(run[2] for run in paced_runs)))
    expected = ok * TOKENS_PER_CALL + sum(
        STREAM_TOKENS[path] * through.ok for path, (_, through) in streams.items()
    )
    closed = f"closed loop, {c} connections"
    rows = [row(closed, "direct to upstream", d), row(closed, "through tokendesk", t, t_cpu)]
    rows += [row(f"{closed}, balance spent", "refused by tokendesk", r, r_cpu)]
    for paced, pd, pt, pt_cpu in paced_runs:
        rows += [row(paced, "direct to upstream", pd), row(paced, "through tokendesk", pt, pt_cpu)]
    rows += [
        row("one at a time", "direct to upstream", sd),
        row("one at a time", "through tokendesk", st, st_cpu),
    ]
    return [
        f"### {label} ({args.users} users)",
        "",
        "| run | path | requests | req/s | p50 ms | p99 ms | server CPU ms/request | statuses |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        added(f"{closed} (mostly queueing, see above)", d, t),
        *(added(paced, pd, pt) for paced, pd, pt, _ in paced_runs),
        added("one at a time", sd, st),
        "",
        f"Streamed, {args.stream_concurrency} connections, {args.stream_requests} calls each:",
        "",
        "| endpoint | path | calls/s | first event p50 ms | p99 ms | ok |",
        "|---|---|---|---|---|---|",
        *(
            f"| {path} | {way} | {run.rps:,.0f} | {run.p50:.2f} | {run.p99:.2f} | {run.ok} |"
            for path, pair_ in streams.items()
            for way, run in zip(("direct to upstream", "through tokendesk"), pair_, strict=True)
        ),
        "",
        *(
            f"Added to the first event, {path}: p50 {t_.p50 - d_.p50:+.2f} ms, "
            f"p99 {t_.p99 - d_.p99:+.2f} ms; throughput {t_.rps / d_.rps:.0%} of direct."
            for path, (d_, t_) in streams.items()
        ),
        "",
        f"Check: {used} tokens debited for {ok} successful calls and the streamed ones "
        f"(expected {expected}), {reserved} still held, "
        f"doctor mismatches: {mismatches}; refused: {r.statuses.get(429, 0)} "
        f"of {r.requests} calls from spent balances.",
        "",
    ]


STREAMED_APIS = ["chat", "responses"]
STREAM_BODIES = {
    "/v1/chat/completions": json.dumps(
        {"model": "fast", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode(),
    "/v1/responses": json.dumps({"model": "fast", "stream": True, "input": "hi"}).encode(),
    "/v1/messages": json.dumps(
        {
            "model": "claude",
            "stream": True,
            "max_tokens": 50,
            "messages": [{"role": "user", "content": "hi"}],
        }
    ).encode(),
}
# What the fake upstream reports for each streamed call (tokendesk always asks chat's).
STREAM_TOKENS = {"/v1/chat/completions": TOKENS_PER_CALL, "/v1/responses": 36, "/v1/messages": 24}
ANTHROPIC_KEY = "bench-upstream-key"
# Headers each streamed call sends besides its key, as its clients do: Anthropic's
# version on Messages (and, direct to the upstream, the upstream's own key).
STREAM_HEADERS = {"/v1/messages": {"anthropic-version": "2023-06-01"}}


@dataclass
class StreamRun:
    firsts: list[float]
    seconds: float
    ok: int

    @property
    def rps(self) -> float:
        return len(self.firsts) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        ordered = sorted(self.firsts)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0

    @property
    def p50(self) -> float:
        return self.pct(0.5)

    @property
    def p99(self) -> float:
        return self.pct(0.99)


async def stream_load(
    port: int, path: str, body: bytes, keys: list[str] | None, args: argparse.Namespace
) -> StreamRun:
    """Streamed calls at ``--stream-concurrency``: the time from sending each to its
    first event's bytes, and the calls per second of the whole run."""
    firsts: list[float] = []
    ok = 0
    count = iter(range(args.stream_requests))
    url = f"http://127.0.0.1:{port}{path}"

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok
        for n in count:
            headers = {"content-type": "application/json", **STREAM_HEADERS.get(path, {})}
            if keys:
                headers["authorization"] = f"Bearer {keys[n % len(keys)]}"
            elif path == "/v1/messages":
                headers["x-api-key"] = ANTHROPIC_KEY
            sent = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                first = True
                async for _ in response.content.iter_any():
                    if first:
                        firsts.append(time.perf_counter() - sent)
                        first = False
                ok += response.status == 200

    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(worker(session) for _ in range(args.stream_concurrency)))
    return StreamRun(firsts, time.perf_counter() - started, ok)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000, help="closed-loop requests")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument(
        "--paced",
        type=lambda text: [float(share) for share in text.split(",") if share],
        default=[0.25, 0.5],
        help="offered rates of the paced runs, as shares of measured capacity (comma-separated)",
    )
    parser.add_argument(
        "--rates",
        type=lambda text: [float(rate) for rate in text.split(",") if rate],
        default=[500.0, 1000.0],
        help="more paced runs at these fixed offered rates, requests/s (comma-separated)",
    )
    parser.add_argument("--paced-seconds", type=float, default=15.0)
    parser.add_argument("--single-requests", type=int, default=2000)
    parser.add_argument("--stream-requests", type=int, default=2000, help="per streamed endpoint")
    parser.add_argument("--stream-concurrency", type=int, default=8)
    parser.add_argument(
        "--refused-requests", type=int, default=10_000, help="closed-loop calls refused (429)"
    )
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
