"""Usage ingest through the HTTP API, in batches, against a live server.

Starts tokendesk with uvicorn on 127.0.0.1 (a random free port) in a subprocess
against a fresh SQLite file, seeds one organization with 1,000 members through
the services, posts the batches with httpx and prints events per second. With
TOKENDESK_BENCH_PG_URL set (a database this script may wipe), PostgreSQL is
measured too.

    .venv/bin/python benchmarks/bench_usage_ingest.py [--batches 500] [--batch-size 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import analyze, cpu_seconds, free_port, reset_postgres, tokendesk_server
from tokendesk.accounts.api_keys import issue_api_key
from tokendesk.accounts.models import Role
from tokendesk.accounts.organizations import create_organization
from tokendesk.accounts.users import create_user
from tokendesk.db import Database
from tokendesk.ledger.doctor import check_balances
from tokendesk.metering.models import UsageEvent
from tokendesk.metering.rollup_check import differences
from tokendesk.migrations.runner import upgrade

USERS = 1_000
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet", "llama-3-70b"]
STARTUP_TIMEOUT = 60.0


@dataclass
class Outcome:
    backend: str
    events: int
    seconds: float
    latencies: list[float]
    # CPU seconds the server process spent, when /proc tells: a figure that shared,
    # busy machines distort far less than wall-clock time.
    server_cpu: float | None

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000


async def seed(url: str) -> tuple[str, list[str]]:
    """An organization with an admin and 1,000 members; returns the admin's key and emails."""
    database = Database(url)
    try:
        async with database.transaction() as s:
            org = await create_organization(s, name="Bench", default_allocation=10_000_000)
            admin = await create_user(
                s,
                organization_id=org.id,
                email="admin@bench.example",
                name="Admin",
                role=Role.ORG_ADMIN,
            )
            _, key = await issue_api_key(s, user=admin)
            emails = []
            for i in range(USERS):
                user = await create_user(
                    s, organization_id=org.id, email=f"user{i}@bench.example", name=f"User {i}"
                )
                emails.append(user.email)
    finally:
        await database.dispose()
    return key, emails


async def verify(url: str, expected_events: int) -> None:
    """Every event stored once, balances equal to the ledger, rollups equal to the events."""
    database = Database(url)
    try:
        async with database.transaction(write=False) as s:
            stored = await s.scalar(select(func.count()).select_from(UsageEvent))
            problems: list[object] = list(await check_balances(s))
            organization_ids = await s.scalars(select(UsageEvent.organization_id).distinct())
            for organization_id in organization_ids.all():
                problems += await differences(s, organization_id=organization_id)
    finally:
        await database.dispose()
    if stored != expected_events or problems:
        raise SystemExit(f"verification failed: {stored} events stored, {problems[:5]}")


def start_server(url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TOKENDESK_DATABASE_URL": url,
        "TOKENDESK_DEMO": "1",
        "TOKENDESK_LOG_LEVEL": "warning",
    }
    command = tokendesk_server(port, env)
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


async def wait_until_up(base: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    async with httpx.AsyncClient(base_url=base, timeout=2.0) as http:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"server exited with {server.returncode} before answering")
            try:
                if (await http.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit(f"server did not answer /healthz within {STARTUP_TIMEOUT:.0f}s")


def make_batches(emails: list[str], batches: int, size: int, tag: str) -> list[dict[str, object]]:
    rng = random.Random(42)
    out = []
    for b in range(batches):
        events = []
        for i in range(size):
            prompt = rng.randint(50, 2_000)
            events.append(
                {
                    "event_id": f"{tag}-{b}-{i}",
                    "user_email": rng.choice(emails),
                    "model": rng.choice(MODELS),
                    "prompt_tokens": prompt,
                    "completion_tokens": rng.randint(10, 800),
                    "source": "bench",
                }
            )
        out.append({"events": events})
    return out


async def post_all(
    base: str, key: str, bodies: list[dict[str, object]], concurrency: int
) -> tuple[float, list[float]]:
    queue: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {key}"}

    async def worker(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            started = time.perf_counter()
            response = await http.post("/api/v1/usage", json=body, headers=headers)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise SystemExit(f"POST /api/v1/usage: {response.status_code} {response.text}")

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60.0, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return elapsed, latencies


async def run_backend(
    backend: str, url: str, *, batches: int, size: int, concurrency: int, workdir: Path
) -> Outcome:
    if backend == "postgres":
        await reset_postgres(url)
    await asyncio.to_thread(upgrade, url)  # alembic runs its own event loop
    key, emails = await seed(url)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = workdir / f"server-{backend}.log"
    server = start_server(url, port, log)
    try:
        await wait_until_up(base, server)
        warmup = make_batches(emails, 10, size, "warmup")
        await post_all(base, key, warmup, concurrency)
        await analyze(url)
        bodies = make_batches(emails, batches, size, "run")
        cpu_before = cpu_seconds(server.pid)
        elapsed, latencies = await post_all(base, key, bodies, concurrency)
        cpu_after = cpu_seconds(server.pid)
    except BaseException:
        print(log.read_text()[-5000:], file=sys.stderr)
        raise
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)
    await verify(url, expected_events=(batches + 10) * size)
    server_cpu = None
    if cpu_before is not None and cpu_after is not None:
        server_cpu = cpu_after - cpu_before
    return Outcome(backend, batches * size, elapsed, latencies, server_cpu)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=500, help="timed batches per backend")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    args = parser.parse_args()
    backends = []
    with tempfile.TemporaryDirectory(prefix="tokendesk-bench-") as tmp:
        workdir = Path(tmp)
        backends.append(("sqlite", f"sqlite+aiosqlite:///{workdir / 'bench.db'}"))
        pg_url = os.environ.get("TOKENDESK_BENCH_PG_URL")
        if pg_url:
            backends.append(("postgres", pg_url))
        else:
            print("PostgreSQL skipped: set TOKENDESK_BENCH_PG_URL to measure it too")
        print(
            f"{args.batches} batches of {args.batch_size} events, {args.concurrency} in flight, "
            f"{USERS} users, {os.cpu_count()} CPUs"
        )
        for backend, url in backends:
            outcome = await run_backend(
                backend,
                url,
                batches=args.batches,
                size=args.batch_size,
                concurrency=args.concurrency,
                workdir=workdir,
            )
            line = (
                f"{outcome.backend:9} {outcome.events:>7} events in {outcome.seconds:6.2f} s = "
                f"{outcome.rate:7.0f} events/s   batch p50 {outcome.percentile(0.5):6.1f} ms, "
                f"p95 {outcome.percentile(0.95):6.1f} ms"
            )
            if outcome.server_cpu:
                line += (
                    f"   server CPU {outcome.server_cpu * 1000 / args.batches:5.1f} ms/batch "
                    f"= {outcome.events / outcome.server_cpu:6.0f} events per CPU-second"
                )
            print(line)
        print(f"load average after the run: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
