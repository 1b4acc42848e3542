"""The container files, as far as they can be checked without a container runtime:
the entry script run for real against SQLite and PostgreSQL, the compose file's
services, health checks and settings, the proxy's upstreams and the Dockerfile's
user and entry."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from sqlalchemy.engine import make_url

from tests.ops.served import tokendesk_env
from tokendesk.config import Settings
from tokendesk.migrations.runner import head_revision

ROOT = Path(__file__).resolve().parents[2]
ENTRY = ROOT / "deploy" / "entrypoint.sh"
SETTINGS = {f"TOKENDESK_{name.upper()}" for name in Settings.model_fields}


def _entry(database_url: str, *args: str) -> subprocess.Popen[str]:
    """deploy/entrypoint.sh as the image runs it, with this checkout's tokendesk first on PATH."""
    env = tokendesk_env(database_url)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(ROOT / "src")
    return subprocess.Popen(
        ["sh", str(ENTRY), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finished(process: subprocess.Popen[str]) -> tuple[int, str]:
    output, _ = process.communicate(timeout=120)
    return process.returncode, output


def test_the_entry_upgrades_a_new_sqlite_database_then_runs_the_command(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh' / 'tokendesk.db'}"
    for _ in range(2):  # safe on every start: the second finds nothing to do
        code, output = _finished(_entry(url, "doctor"))
        assert code == 0, output
        assert "is at the latest schema" in output
        assert "all 0 balances match the ledger" in output


def test_a_failed_upgrade_stops_the_entry_before_the_server(tmp_path: Path) -> None:
    code, output = _finished(_entry("postgresql+asyncpg://nobody@127.0.0.1:1/none", "serve"))
    assert code == 1
    assert "cannot reach the database" in output
    assert "Uvicorn running" not in output


def _plain(db_url: str, database: str) -> str:
    """``db_url`` for asyncpg itself, on ``database``."""
    url = make_url(db_url).set(drivername="postgresql", database=database)
    return url.render_as_string(hide_password=False)


async def test_two_entries_at_once_on_a_new_postgresql_database_take_turns(
    postgres_only: None, db_url: str
) -> None:
    name = f"{make_url(db_url).database}_entry_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(_plain(db_url, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            url = make_url(db_url).set(database=name).render_as_string(hide_password=False)
            entries = [_entry(url, "doctor") for _ in range(2)]
            for code, output in await asyncio.gather(
                *(asyncio.to_thread(_finished, entry) for entry in entries)
            ):
                assert code == 0, output
                assert "all 0 balances match the ledger" in output
            fresh = await asyncpg.connect(_plain(db_url, name))
            try:
                revision = await fresh.fetchval("SELECT version_num FROM alembic_version")
                assert revision == head_revision()
            finally:
                await fresh.close()
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_compose_runs_postgresql_and_two_instances_behind_the_proxy() -> None:
    services = _compose()["services"]
    assert set(services) == {"db", "tokendesk-1", "tokendesk-2", "proxy"}
    for name in ("tokendesk-1", "tokendesk-2"):
        service = services[name]
        assert service["build"] == "."
        assert "ports" not in service  # only the proxy is reached from outside
        assert service["depends_on"]["db"]["condition"] == "service_healthy"
        assert "/readyz" in " ".join(service["healthcheck"]["test"])
        environment = service["environment"]
        # Every setting it names is one tokendesk reads.
        assert set(environment) <= SETTINGS, set(environment) - SETTINGS
        url = environment["TOKENDESK_DATABASE_URL"]
        assert url.startswith("postgresql+asyncpg://") and "@db:5432/" in url
        grace = float(environment["TOKENDESK_SHUTDOWN_GRACE_SECONDS"])
        assert float(service["stop_grace_period"].rstrip("s")) > grace
    assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])
    proxy = services["proxy"]
    assert {name: dep["condition"] for name, dep in proxy["depends_on"].items()} == {
        "tokendesk-1": "service_healthy",
        "tokendesk-2": "service_healthy",
    }
    [mount] = proxy["volumes"]
    config = ROOT / mount.split(":")[0]
    assert config.is_file()
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", config.read_text(), re.MULTILINE)
    assert servers == [("tokendesk-1", "8000"), ("tokendesk-2", "8000")]
    assert "proxy_buffering off;" in config.read_text()  # streams go out as they come


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_the_dockerfile_runs_the_entry_as_a_user_of_its_own() -> None:
    instructions = _instructions()
    [base] = [arg for op, arg in instructions if op == "FROM"]
    assert re.fullmatch(r"python:3\.11-slim", base)
    [user] = [arg for op, arg in instructions if op == "USER"]
    assert user not in ("root", "0")
    assert any(op == "RUN" and "useradd" in arg and user in arg for op, arg in instructions)
    # The user comes after everything that needs root.
    ops = [op for op, _ in instructions]
    assert ops.index("USER") > max(i for i, op in enumerate(ops) if op == "RUN")
    copies = [arg.split() for op, arg in instructions if op == "COPY"]
    for *sources, _target in copies:
        for source in sources:
            assert (ROOT / source).exists(), source
    assert ["deploy/entrypoint.sh", "/usr/local/bin/tokendesk-entrypoint"] in copies
    assert dict(instructions)["ENTRYPOINT"] == '["tokendesk-entrypoint"]'
    assert dict(instructions)["STOPSIGNAL"] == "SIGTERM"
    assert "/readyz" in dict(instructions)["HEALTHCHECK"]
    environment = " ".join(arg for op, arg in instructions if op == "ENV")
    named = set(re.findall(r"\b(TOKENDESK_\w+)=", environment))
    assert named and named <= SETTINGS
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "data"} <= set(ignored)


@pytest.mark.parametrize("name", ["compose.yaml", "Dockerfile", "deploy/entrypoint.sh"])
def test_the_container_files_are_documented(name: str) -> None:
    assert f"`{name}`" in (ROOT / "README.md").read_text()
