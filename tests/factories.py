"""Test data built through the real services, never by hand-written rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

import tokendesk.models as models
from tokendesk.accounts.api_keys import issue_api_key
from tokendesk.accounts.models import Role
from tokendesk.accounts.organizations import create_organization
from tokendesk.accounts.teams import add_team_owner, create_team
from tokendesk.accounts.users import create_user
from tokendesk.db import Database

# Every person of the test world signs in with it.
PASSWORD = "correct horse battery"


@dataclass
class Person:
    id: int
    email: str
    name: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class World:
    org_id: int
    other_org_id: int
    team_a: int
    team_b: int
    people: dict[str, Person] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Person:
        try:
            return self.people[name]
        except KeyError:
            raise AttributeError(name) from None


async def make_world(database: Database, **org_options: Any) -> World:
    """Acme: org default 100,000; team Alpha (default 50,000, owned by `owner`) and
    team Beta (no default). People: admin (org_admin), owner (team_owner of Alpha,
    member of Alpha), alice and amy (Alpha), bob (Beta), nora (no team, override 5,000),
    root (super_admin of Other Org), olga (org_admin of Other Org), oscar (member there).
    """
    options = {"default_allocation": 100_000, "max_request": 1_000_000, **org_options}
    async with database.transaction() as s:
        org = await create_organization(s, name="Acme", **options)
        other = await create_organization(s, name="Other Org", default_allocation=10_000)
        alpha = await create_team(
            s, organization_id=org.id, name="Alpha", default_allocation=50_000
        )
        beta = await create_team(s, organization_id=org.id, name="Beta")
        specs = [
            ("admin", org.id, Role.ORG_ADMIN, None, None),
            ("owner", org.id, Role.TEAM_OWNER, alpha.id, None),
            ("alice", org.id, Role.MEMBER, alpha.id, None),
            ("amy", org.id, Role.MEMBER, alpha.id, None),
            ("bob", org.id, Role.MEMBER, beta.id, None),
            ("nora", org.id, Role.MEMBER, None, 5_000),
            ("root", other.id, Role.SUPER_ADMIN, None, None),
            ("olga", other.id, Role.ORG_ADMIN, None, None),
            ("oscar", other.id, Role.MEMBER, None, None),
        ]
        world = World(org_id=org.id, other_org_id=other.id, team_a=alpha.id, team_b=beta.id)
        for handle, org_id, role, team_id, override in specs:
            user = await create_user(
                s,
                organization_id=org_id,
                email=f"{handle}@example.com",
                name=handle.capitalize(),
                role=role,
                team_id=team_id,
                allocation_override=override,
                password=PASSWORD,
            )
            _, key = await issue_api_key(s, user=user)
            world.people[handle] = Person(user.id, user.email, user.name, key)
        owner = await s.get(models.User, world.people["owner"].id)
        assert owner is not None
        await add_team_owner(s, team=alpha, user=owner)
    return world


async def add_beta_owner(database: Database, world: World) -> Person:
    """Bea, owner of team Beta (Bob's team), herself in no team."""
    async with database.transaction() as s:
        user = await create_user(
            s,
            organization_id=world.org_id,
            email="bea@example.com",
            name="Bea",
            role=Role.TEAM_OWNER,
        )
        _, key = await issue_api_key(s, user=user)
        team = await s.get(models.Team, world.team_b)
        assert team is not None
        await add_team_owner(s, team=team, user=user)
        return Person(user.id, user.email, user.name, key)


async def snapshot(database: Database) -> dict[str, Any]:
    """Row counts of every table and the sum of every balance column: proof nothing moved."""
    out: dict[str, Any] = {}
    async with database.transaction(write=False) as s:
        for table in models.Base.metadata.sorted_tables:
            out[table.name] = await s.scalar(select(func.count()).select_from(table))
        b = models.Balance
        sums = await s.execute(
            select(
                func.sum(b.allocation),
                func.sum(b.granted),
                func.sum(b.adjusted),
                func.sum(b.used),
                func.sum(b.reserved),
            )
        )
        out["balance_sums"] = tuple(sums.one())
    return out
