"""The Acme organization the admin browser tests and scenarios run against.

Seeded through the services into a fresh database (SQLite file or a scratch
PostgreSQL database) before any server starts; every person signs in with
``PASSWORD`` and has an API key for submitting requests as that person.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.web_admin.live_server import LiveServer
from tokendesk.accounts.api_keys import issue_api_key
from tokendesk.accounts.auth import build_actor
from tokendesk.accounts.models import Role, TeamOwner
from tokendesk.accounts.organizations import create_organization
from tokendesk.accounts.teams import create_team
from tokendesk.accounts.users import create_user
from tokendesk.db import Database
from tokendesk.migrations.runner import upgrade
from tokendesk.token_requests import decisions

PASSWORD = "admin-e2e-password"
BULK_SIZE = 30
# More than one page (50 rows), for "select all N matching".
CROWD_SIZE = 55

# handle: (name, role, team); everyone signs in with PASSWORD and has an API key.
PEOPLE: dict[str, tuple[str, Role, str | None]] = {
    "admin": ("Ada Admin", Role.ORG_ADMIN, None),
    "admin2": ("Basil Admin", Role.ORG_ADMIN, None),
    "owner": ("Olive Owner", Role.TEAM_OWNER, "Alpha"),
    "alice": ("Alice Alpha", Role.MEMBER, "Alpha"),
    "amy": ("Amy Alpha", Role.MEMBER, "Alpha"),
    "ana": ("Ana Alpha", Role.MEMBER, "Alpha"),
    "bob": ("Bob Beta", Role.MEMBER, "Beta"),
    "bea": ("Bea Beta", Role.MEMBER, "Beta"),
    "kai": ("Kai Beta", Role.MEMBER, "Beta"),
}


@dataclass
class Site:
    server: LiveServer
    keys: dict[str, str] = field(default_factory=dict)
    organization: str = "Acme"

    @property
    def url(self) -> str:
        return self.server.url

    def email(self, handle: str) -> str:
        return f"{handle}@acme.example"

    def api(self, handle: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.keys[handle]}"},
            timeout=10,
        )

    def submit(self, handle: str, amount: int, reason: str = "more please") -> int:
        with self.api(handle) as api:
            response = api.post("/api/v1/token-requests", json={"amount": amount, "reason": reason})
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    def me(self, handle: str) -> dict[str, Any]:
        with self.api(handle) as api:
            response = api.get("/api/v1/me")
        response.raise_for_status()
        return dict(response.json())


async def seed(url: str) -> dict[str, str]:
    """Acme with teams Alpha (owned by ``owner``), Beta, Bulk (30 pending requests)
    and Crowd (55 pending requests)."""
    database = Database(url)
    keys: dict[str, str] = {}
    try:
        async with database.transaction() as s:
            org = await create_organization(
                s, name="Acme", default_allocation=100_000, max_request=500_000
            )
            teams = {
                name: await create_team(s, organization_id=org.id, name=name)
                for name in ("Alpha", "Beta", "Bulk", "Crowd")
            }
            for handle, (name, role, team) in PEOPLE.items():
                user = await create_user(
                    s,
                    organization_id=org.id,
                    email=f"{handle}@acme.example",
                    name=name,
                    role=role,
                    team_id=teams[team].id if team else None,
                    password=PASSWORD,
                )
                _, keys[handle] = await issue_api_key(s, user=user, name="e2e")
                if handle == "owner":
                    s.add(TeamOwner(team_id=teams["Alpha"].id, user_id=user.id))
            for team, size in (("Bulk", BULK_SIZE), ("Crowd", CROWD_SIZE)):
                for index in range(size):
                    user = await create_user(
                        s,
                        organization_id=org.id,
                        email=f"{team.lower()}{index:02d}@acme.example",
                        name=f"{team} Member {index:02d}",
                        team_id=teams[team].id,
                    )
                    await decisions.submit(
                        s,
                        actor=await build_actor(s, user),
                        amount=1_000 + index,
                        reason="quarter-end batch",
                    )
    finally:
        await database.dispose()
    return keys


def prepare(url: str) -> dict[str, str]:
    # Playwright's sync API runs an event loop in the test thread; give asyncio its own.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(upgrade, url).result()
        return pool.submit(asyncio.run, seed(url)).result()


@contextlib.contextmanager
def own_postgres_database(url: str, suffix: str) -> Iterator[str]:
    """A scratch database next to the test database, created and dropped around a test."""
    prefix, _, name = url.rpartition("/")
    scratch = f"{name.split('?')[0]}_{suffix}"
    maintenance = f"{prefix}/postgres".replace("postgresql+asyncpg://", "postgresql://")

    async def execute(sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(maintenance)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def run(sql: str) -> None:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(asyncio.run, execute(sql)).result()

    run(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
    run(f'CREATE DATABASE "{scratch}"')
    try:
        yield f"{prefix}/{scratch}"
    finally:
        run(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
