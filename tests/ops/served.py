"""``tokendesk serve`` as an operator runs it: a real process on a loopback port,
stopped by its PID, and the ``tokendesk`` commands run beside it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.fake_upstream import free_port

STARTUP_SECONDS = 60.0
SECRET = "served-tests-secret-0123456789"


def tokendesk_env(database_url: str, **settings: str) -> dict[str, str]:
    """The environment of a tokendesk command on ``database_url``; ``settings`` are
    TOKENDESK_* names without the prefix, lower case."""
    env = {
        **os.environ,
        "TOKENDESK_DATABASE_URL": database_url,
        "TOKENDESK_SECRET_KEY": SECRET,
        "TOKENDESK_DEMO": "0",
        "TOKENDESK_SCHEDULER_ENABLED": "0",
        "TOKENDESK_NOTIFY_WORKER_ENABLED": "0",
    }
    env.update({f"TOKENDESK_{name.upper()}": value for name, value in settings.items()})
    return env


def tokendesk(
    *args: str, database_url: str, timeout: float = 60, **settings: str
) -> subprocess.CompletedProcess[str]:
    """One ``tokendesk`` command, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "tokendesk.cli", *args],
        env=tokendesk_env(database_url, **settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Served:
    """``tokendesk serve`` in a subprocess, its output in ``log_path``."""

    def __init__(self, database_url: str, log_path: Path, *args: str, **settings: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = tokendesk_env(database_url, **settings)
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tokendesk.cli", "serve", "--port", str(self.port), *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, path: str = "/readyz") -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                if httpx.get(f"{self.url}{path}", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited ({self.process.returncode}):\n{self.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not start:\n{self.log}")
            time.sleep(0.1)

    def terminate(self) -> float:
        """Send SIGTERM; returns the time it was sent (time.monotonic)."""
        sent = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        return sent

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
