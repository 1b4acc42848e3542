"""A real tokendesk server in a subprocess on a random loopback port, stopped by its PID.

Used by the browser tests and the admin benchmark; both seed the database
through the services before the server starts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

STARTUP_SECONDS = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    def __init__(
        self,
        database_url: str,
        *,
        log_path: Path,
        secret: str,
        scheduler_seconds: float | None = None,
    ) -> None:
        self.database_url = database_url
        # The in-server scheduler's interval, or None to run none.
        self.scheduler_seconds = scheduler_seconds
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.secret = secret
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "TOKENDESK_DATABASE_URL": self.database_url,
            "TOKENDESK_DEMO": "1",
            # Several processes must accept each other's session cookies.
            "TOKENDESK_SECRET_KEY": self.secret,
            "TOKENDESK_SCHEDULER_ENABLED": "0" if self.scheduler_seconds is None else "1",
            "TOKENDESK_LOG_LEVEL": "warning",
        }
        if self.scheduler_seconds is not None:
            env["TOKENDESK_SCHEDULER_INTERVAL_SECONDS"] = str(self.scheduler_seconds)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "tokendesk.app:create_app",
                    "--factory",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                    # Open event streams would otherwise hold a shutdown until they end.
                    "--timeout-graceful-shutdown",
                    "3",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early; see {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer /healthz within {STARTUP_SECONDS}s")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


@contextlib.contextmanager
def running(
    database_url: str, *, log_path: Path, secret: str, scheduler_seconds: float | None = None
) -> Iterator[LiveServer]:
    server = LiveServer(
        database_url, log_path=log_path, secret=secret, scheduler_seconds=scheduler_seconds
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
