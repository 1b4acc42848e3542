"""SSE fan-out: thousands of members connected to /events on one instance; approvals reach them.

Measures, for approvals made one at a time through the REST API, the time from
sending the approval to the member's open stream receiving ``request.updated``,
and the server's resident memory with every client connected.

The streams that are not measured are held open by separate client processes
(``--holders``, plain asyncio protocols that only read), so the measuring process
runs nothing but the approvals and the streams it measures; ``--pin`` puts the
server on CPU 0 and every client on CPU 1 (``taskset``). Approvals are paced
(``--interval``) so that they span more than one heartbeat period (15 s): a run
that finished between two heartbeats would never see their cost. Every process
raises its open-file limit to the hard limit (10,000 connections need 10,000
descriptors on each side). Run:
    .venv/bin/python benchmarks/bench_sse_fanout.py [--clients 1000] [--approvals 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    cpu_seconds,
    free_port,
    machine,
    process,
    sqlite_url,
    tokendesk_server,
    wait_ready,
)

SNAPSHOT = b"event: snapshot"
PING = b": ping"


def raise_open_files() -> int:
    """Raise this process's soft open-file limit to its hard limit; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def seed(url: str, clients: int) -> tuple[str, list[tuple[str, int]]]:
    from tokendesk.accounts.api_keys import issue_api_key
    from tokendesk.accounts.auth import build_actor
    from tokendesk.accounts.models import Role
    from tokendesk.accounts.organizations import create_organization
    from tokendesk.accounts.users import create_user
    from tokendesk.db import Database
    from tokendesk.migrations.runner import upgrade_async
    from tokendesk.token_requests import decisions

    await upgrade_async(url)
    database = Database(url)
    members: list[tuple[str, int]] = []
    async with database.transaction() as s:
        org = await create_organization(s, name="Fanout", default_allocation=100_000)
        admin = await create_user(
            s,
            organization_id=org.id,
            email="admin@fanout.example",
            name="Admin",
            role=Role.ORG_ADMIN,
        )
        _, admin_key = await issue_api_key(s, user=admin)
        for n in range(clients):
            user = await create_user(
                s, organization_id=org.id, email=f"m{n}@fanout.example", name=f"Member {n}"
            )
            _, key = await issue_api_key(s, user=user)
            request = await decisions.submit(
                s, actor=await build_actor(s, user), amount=1000, reason="more"
            )
            members.append((key, request.id))
    await database.dispose()
    return admin_key, members


async def seeded(url: str, clients: int, cache: str | None) -> tuple[str, list[tuple[str, int]]]:
    """Seed ``url``'s database, or copy one seeded before into its place from ``cache``."""
    if cache is None:
        return await seed(url, clients)
    folder = Path(cache) / f"fanout-{clients}"
    target = Path(url.split("///", 1)[1])
    if not (folder / "members.json").exists():
        admin_key, members = await seed(url, clients)
        folder.mkdir(parents=True, exist_ok=True)
        for file in target.parent.glob(target.name + "*"):
            shutil.copy(file, folder / file.name)
        (folder / "members.json").write_text(json.dumps([admin_key, members]))
    for file in folder.glob(target.name + "*"):
        shutil.copy(file, target.parent / file.name)
    admin_key, members = json.loads((folder / "members.json").read_text())
    return admin_key, [(key, request_id) for key, request_id in members]


def request_of(key: str) -> bytes:
    return (
        f"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()


class Listener:
    """One measured SSE connection; records when each event type arrives."""

    def __init__(self) -> None:
        self.snapshot = asyncio.Event()
        self.updated = asyncio.Event()
        self.updated_at = 0.0

    async def run(self, port: int, key: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_of(key))
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                if line.startswith(b"event: snapshot"):
                    self.snapshot.set()
                elif line.startswith(b"event: request.updated"):
                    self.updated_at = time.perf_counter()
                    self.updated.set()
        finally:
            writer.close()


class Held(asyncio.Protocol):
    """An unmeasured stream: reads and drops, noting its snapshot and its heartbeats."""

    def __init__(self, key: str, counts: dict[str, int], all_in: asyncio.Event, of: int) -> None:
        self.key = key
        self.counts = counts
        self.all_in = all_in
        self.of = of
        self.head = b""
        self.seen_snapshot = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(request_of(self.key))

    def data_received(self, data: bytes) -> None:
        if not self.seen_snapshot:
            self.head += data
            if SNAPSHOT in self.head:
                self.seen_snapshot = True
                self.counts["snapshots"] += 1
                self.head = b""
                if self.counts["snapshots"] == self.of:
                    self.all_in.set()
            return
        self.counts["pings"] += data.count(PING)

    def connection_lost(self, exc: Exception | None) -> None:
        self.counts["closed"] += 1


async def hold(port: int, keys: list[str]) -> None:
    """Holder mode: open a stream for every key; say ``ready`` once each has its
    snapshot; report heartbeats seen on request; stop at end of input."""
    counts = {"snapshots": 0, "pings": 0, "closed": 0}
    all_in = asyncio.Event()
    loop = asyncio.get_running_loop()
    transports = []
    for start in range(0, len(keys), 500):
        opened = await asyncio.gather(
            *(
                loop.create_connection(
                    lambda k=key: Held(k, counts, all_in, len(keys)), "127.0.0.1", port
                )
                for key in keys[start : start + 500]
            )
        )
        transports.extend(transport for transport, _ in opened)
    # Bounded, so a holder whose parent went away does not linger.
    await asyncio.wait_for(all_in.wait(), 300)
    print("ready", flush=True)
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    while await stdin.readline():
        print(json.dumps(counts), flush=True)
    for transport in transports:
        transport.close()


def read_keys(path: str) -> list[str]:
    return Path(path).read_text().split()


def rss_mb(pid: int) -> float:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) / 1024
    return 0.0


def pinned(args: list[str], cpu: int | None) -> list[str]:
    if cpu is None:
        return args
    taskset = shutil.which("taskset")
    assert taskset is not None, "--pin needs taskset (util-linux)"
    return [taskset, "-c", str(cpu), *args]


async def ask(holder: asyncio.subprocess.Process) -> dict[str, int]:
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.write(b"?\n")
    await holder.stdin.drain()
    counts: dict[str, int] = json.loads(await holder.stdout.readline())
    return counts


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--approvals", type=int, default=200)
    parser.add_argument("--holders", type=int, default=2, help="client processes holding streams")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between approvals")
    parser.add_argument("--pin", action="store_true", help="server on CPU 0, clients on CPU 1")
    parser.add_argument(
        "--seed-cache", help="folder keeping seeded databases to copy (alternating runs)"
    )
    parser.add_argument("--hold", nargs=2, metavar=("PORT", "KEYFILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    open_files = raise_open_files()
    if args.hold:
        await hold(int(args.hold[0]), read_keys(args.hold[1]))
        return
    if args.pin:
        os.sched_setaffinity(0, {1})
    url = sqlite_url()
    admin_key, members = await seeded(url, args.clients, args.seed_cache)
    step = max(1, len(members) // args.approvals)
    measured = list(range(0, len(members), step))[: args.approvals]
    chosen = set(measured)
    rest = [key for n, (key, _) in enumerate(members) if n not in chosen]
    port = free_port()
    env = {"TOKENDESK_DATABASE_URL": url, "TOKENDESK_DEMO": "1", "TOKENDESK_SCHEDULER_ENABLED": "0"}
    server_cmd = pinned(tokendesk_server(port, env), 0 if args.pin else None)
    folder = Path(tempfile.mkdtemp(prefix="tokendesk-bench-keys-"))
    with process(server_cmd, env) as server:
        wait_ready(f"http://127.0.0.1:{port}/healthz")
        idle_rss = rss_mb(server.pid)
        started = time.perf_counter()
        holders = []
        for n in range(args.holders):
            share = rest[n :: args.holders]
            if not share:
                continue
            keyfile = folder / f"keys{n}"
            keyfile.write_text("\n".join(share))
            cmd = [sys.executable, __file__, "--hold", str(port), str(keyfile)]
            holders.append(
                await asyncio.create_subprocess_exec(
                    *pinned(cmd, 1 if args.pin else None),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
            )
        listeners = {index: Listener() for index in measured}
        tasks = [
            asyncio.create_task(listener.run(port, members[index][0]))
            for index, listener in listeners.items()
        ]

        async def holder_ready(holder: asyncio.subprocess.Process) -> None:
            assert holder.stdout is not None
            line = await holder.stdout.readline()
            assert line.strip() == b"ready", line

        await asyncio.wait_for(
            asyncio.gather(
                *(x.snapshot.wait() for x in listeners.values()),
                *(holder_ready(h) for h in holders),
            ),
            300,
        )
        connect_seconds = time.perf_counter() - started
        connected_rss = rss_mb(server.pid)
        cpu_before = cpu_seconds(server.pid)
        approvals_started = time.perf_counter()
        latencies = []
        headers = {"Authorization": f"Bearer {admin_key}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            for index in measured:
                _, request_id = members[index]
                due = time.perf_counter() + args.interval
                sent = time.perf_counter()
                r = await http.post(
                    f"/api/v1/token-requests/{request_id}/approve",
                    json={"note": "ok"},
                    headers=headers,
                )
                assert r.status_code == 200, r.text
                await asyncio.wait_for(listeners[index].updated.wait(), 30)
                latencies.append((listeners[index].updated_at - sent) * 1000)
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
        approvals_seconds = time.perf_counter() - approvals_started
        cpu_after = cpu_seconds(server.pid)
        final_rss = rss_mb(server.pid)
        held = [await ask(h) for h in holders]
        for holder in holders:
            assert holder.stdin is not None
            holder.stdin.close()
        await asyncio.gather(*(h.wait() for h in holders))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    shutil.rmtree(folder, ignore_errors=True)
    assert sum(h["closed"] for h in held) == 0, "the server closed held streams"
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    server_cpu = None
    if cpu_before is not None and cpu_after is not None:
        server_cpu = round(cpu_after - cpu_before, 2)
    print(f"Machine: {machine()}, load average {os.getloadavg()[0]:.1f}\n")
    print(
        json.dumps(
            {
                "clients": len(members),
                "holder_processes": len(holders),
                "pinned": args.pin,
                "open_file_limit": open_files,
                "connect_all_seconds": round(connect_seconds, 2),
                "approvals_measured": len(latencies),
                "approvals_seconds": round(approvals_seconds, 1),
                "approve_to_event_p50_ms": round(statistics.median(latencies), 2),
                "approve_to_event_p99_ms": round(p99, 2),
                "approve_to_event_max_ms": round(ordered[-1], 2),
                "heartbeats_seen_by_holders": sum(h["pings"] for h in held),
                "server_cpu_seconds_during_approvals": server_cpu,
                "server_rss_mb_idle": round(idle_rss, 1),
                "server_rss_mb_connected": round(connected_rss, 1),
                "server_rss_mb_after": round(final_rss, 1),
                "server_kb_per_stream": round(
                    (connected_rss - idle_rss) * 1024 / max(1, len(members)), 1
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
