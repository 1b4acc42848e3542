"""Shared set-up for benchmarks: fresh databases, seeded users, servers in subprocesses."""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    cpus = os.cpu_count()
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    python = platform.python_version()
    return f"{platform.system()} {platform.machine()}, {cpus} cores{mem}, Python {python}"


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux), or None where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process (Linux), or None where /proc is missing."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux; none where /proc lacks the list)."""
    try:
        listed = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return sorted(int(child) for child in listed.split())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sqlite_url() -> str:
    folder = tempfile.mkdtemp(prefix="tokendesk-bench-")
    return f"sqlite+aiosqlite:///{folder}/bench.db"


async def reset_postgres(url: str) -> None:
    """Wipe the benchmark database's public schema (never point this at real data)."""
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    finally:
        await conn.close()


async def analyze(url: str, *, vacuum: bool = False) -> None:
    """Give PostgreSQL's planner statistics of the loaded tables, as autovacuum would.

    This machine's PostgreSQL runs with autovacuum off, so tables filled by a
    benchmark would otherwise never be analyzed and the planner would guess from
    their sizes alone (scanning every usage event for a list of ids, say); a
    production server has autovacuum on. ``vacuum`` also clears the dead rows the
    loading left behind (VACUUM ANALYZE). SQLite: nothing to do.
    """
    if not url.startswith("postgresql"):
        return
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute("VACUUM ANALYZE" if vacuum else "ANALYZE")
    finally:
        await conn.close()


def wait_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def process(
    args: list[str], env: dict[str, str] | None = None, *, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``args`` running from the project's folder; its output goes to ``log`` if given."""
    with open(log, "ab") if log else nullcontext() as out:
        proc = subprocess.Popen(
            args,
            env={**os.environ, **(env or {})},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
        )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def tokendesk_server(port: int, env: dict[str, str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "tokendesk.app:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
