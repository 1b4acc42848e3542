"""SSE fan-out: 1,000 members connected to /events on one instance; an approval reaches its member.

Measures, for approvals made one at a time through the REST API, the time from
sending the approval to the member's open stream receiving ``request.updated``,
and the server's resident memory with every client connected. Run:
    .venv/bin/python benchmarks/bench_sse_fanout.py [--clients 1000] [--approvals 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    free_port,
    machine,
    process,
    sqlite_url,
    tokendesk_server,
    wait_ready,
)


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


class Listener:
    """One raw SSE connection; records when each event type arrives."""

    def __init__(self) -> None:
        self.snapshot = asyncio.Event()
        self.updated = asyncio.Event()
        self.updated_at = 0.0

    async def run(self, port: int, key: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
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


def rss_mb(pid: int) -> float:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) / 1024
    return 0.0


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--approvals", type=int, default=200)
    args = parser.parse_args()
    url = sqlite_url()
    admin_key, members = await seed(url, args.clients)
    port = free_port()
    env = {"TOKENDESK_DATABASE_URL": url, "TOKENDESK_DEMO": "1", "TOKENDESK_SCHEDULER_ENABLED": "0"}
    with process(tokendesk_server(port, env), env) as server:
        wait_ready(f"http://127.0.0.1:{port}/healthz")
        idle_rss = rss_mb(server.pid)
        listeners = [Listener() for _ in members]
        tasks = [
            asyncio.create_task(listener.run(port, key))
            for listener, (key, _) in zip(listeners, members, strict=True)
        ]
        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(x.snapshot.wait() for x in listeners)), 120)
        connect_seconds = time.perf_counter() - started
        connected_rss = rss_mb(server.pid)
        latencies = []
        headers = {"Authorization": f"Bearer {admin_key}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            step = max(1, len(members) // args.approvals)
            for index in range(0, len(members), step)[: args.approvals]:
                _, request_id = members[index]
                sent = time.perf_counter()
                r = await http.post(
                    f"/api/v1/token-requests/{request_id}/approve",
                    json={"note": "ok"},
                    headers=headers,
                )
                assert r.status_code == 200, r.text
                await asyncio.wait_for(listeners[index].updated.wait(), 10)
                latencies.append((listeners[index].updated_at - sent) * 1000)
        final_rss = rss_mb(server.pid)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    print(f"Machine: {machine()}\n")
    print(
        json.dumps(
            {
                "clients": len(members),
                "connect_all_seconds": round(connect_seconds, 2),
                "approvals_measured": len(latencies),
                "approve_to_event_p50_ms": round(statistics.median(latencies), 2),
                "approve_to_event_p99_ms": round(p99, 2),
                "server_rss_mb_idle": round(idle_rss, 1),
                "server_rss_mb_connected": round(connected_rss, 1),
                "server_rss_mb_after": round(final_rss, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
