"""``tokendesk serve`` with ``TOKENDESK_LOG_FORMAT=json``: every line it writes, uvicorn's
own included, is one JSON object; no access log besides the request log; no prompt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.fake_upstream import free_port
from tokendesk.migrations.runner import upgrade

SECRET_PROMPT = "PROMPT-SECRET-served-9911"


def test_a_served_instance_writes_only_json_lines_without_the_prompt(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'served.db'}"
    upgrade(url)
    port = free_port()
    env = {
        **os.environ,
        "TOKENDESK_DATABASE_URL": url,
        "TOKENDESK_DEMO": "1",
        "TOKENDESK_LOG_FORMAT": "json",
        "TOKENDESK_SCHEDULER_ENABLED": "0",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "tokendesk.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        # Bounded, but generous: a busy machine starts a server slowly.
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            assert server.poll() is None, "the server exited"
            time.sleep(0.1)
        r = httpx.post(
            f"{base}/v1/chat/completions",
            json={"model": "demo", "messages": [{"role": "user", "content": SECRET_PROMPT}]},
            headers={"X-Request-ID": "served-1", "Authorization": "Bearer td_not-a-key"},
        )
        assert r.status_code == 401
        assert r.headers["x-request-id"] == "served-1"
        metrics = httpx.get(f"{base}/metrics")
        assert 'outcome="unauthorized"' in metrics.text
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=20)
    lines = [line for line in output.decode().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line: one JSON object
    loggers = {line["logger"] for line in parsed}
    assert "uvicorn.error" in loggers  # uvicorn's own lines take the format too
    assert "uvicorn.access" not in loggers
    [call] = [line for line in parsed if line.get("request_id") == "served-1"]
    assert call["route"] == "/v1/chat/completions"
    assert call["status"] == 401
    assert call["user_id"] is None
    assert SECRET_PROMPT not in output.decode()
