"""A minimal HTTP/1.1 keep-alive load generator (raw asyncio streams, no client library).

A full HTTP client costs more CPU than the servers being measured on a 2-core
machine; this one only writes a prepared request and reads Content-Length bodies.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    statuses: dict[int, int]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms)


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        f"Content-Length: {len(body)}",
        "Content-Type: application/json",
    ]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        lname = name.strip().lower()
        if lname == b"content-length":
            length = int(value.strip())
        elif lname == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def run_load(
    host: str,
    port: int,
    make_request: Callable[[int], bytes],
    *,
    concurrency: int,
    total: int,
    rate: float | None = None,
    max_seconds: float = 120.0,
) -> LoadResult:
    """Send ``total`` requests over ``concurrency`` keep-alive connections (bounded in time).

    Without ``rate``, a closed loop: each connection sends its next request as soon
    as the previous answer arrives, which measures capacity (and, by Little's law,
    latency there is mostly queueing: concurrency / throughput).

    With ``rate`` (requests per second), an open loop: request n is due at
    start + n / rate and goes out on whichever connection is free. A request sent
    late because every connection was busy counts its latency from when it was
    due, so a server falling behind shows in the figures instead of quietly
    slowing the generator down.
    """
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = iter(range(total))
    connections = [await asyncio.open_connection(host, port) for _ in range(concurrency)]
    started = time.perf_counter()
    deadline = started + max_seconds

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for n in counter:
                now = time.perf_counter()
                if now > deadline:
                    break
                start = now
                if rate is not None:
                    due = started + n / rate
                    if due > now:
                        await asyncio.sleep(due - now)
                        start = time.perf_counter()
                    else:
                        start = due
                writer.write(make_request(n))
                status = await _read_response(reader)
                latencies.append((time.perf_counter() - start) * 1000)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    # The generator's own collector pauses would count as the server's latency.
    gc.disable()
    try:
        await asyncio.gather(*(worker(reader, writer) for reader, writer in connections))
    finally:
        gc.enable()
    return LoadResult(len(latencies), time.perf_counter() - started, latencies, statuses)
