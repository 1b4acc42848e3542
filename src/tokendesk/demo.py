"""Demo data: two organizations a newcomer can click through (``tokendesk demo``).

Everything is created through the real services, in one transaction, so the
demo obeys every rule the product does (allocations, ledger, audit trail) and
``tokendesk doctor`` finds it clean. Seeding is idempotent: if the demo
organization already exists, nothing is written.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.api_keys import issue_api_key
from tokendesk.accounts.auth import build_actor
from tokendesk.accounts.models import Organization, Role, Team, User
from tokendesk.accounts.organizations import create_organization
from tokendesk.accounts.security import hash_password
from tokendesk.accounts.teams import add_team_owner, create_team
from tokendesk.accounts.users import create_user
from tokendesk.db import Database, utcnow
from tokendesk.ledger import service as ledger
from tokendesk.metering.service import UsageInput, record_usage
from tokendesk.token_requests import decisions

DEMO_ORGANIZATION = "Acme Robotics"
SECOND_ORGANIZATION = "Globex"
DEMO_PASSWORD = "demo-password"

MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "llama-3.1-70b")
MODEL_WEIGHTS = (5, 8, 4, 2)
SOURCES = ("chat", "gateway", "api")


@dataclass(frozen=True)
class Person:
    email: str
    name: str
    role: Role
    team: str | None = None
    allocation: int | None = None
    # Share of the allocation already used this period, spread over the period so far.
    used_share: float = 0.0


ACME_PEOPLE = (
    Person("admin@acme.example", "Dana Whitfield", Role.ORG_ADMIN, used_share=0.12),
    Person("owner@acme.example", "Priya Raman", Role.TEAM_OWNER, "Research", used_share=0.35),
    Person("lukas.berger@acme.example", "Lukas Berger", Role.MEMBER, "Research", used_share=0.6),
    Person("mei.tanaka@acme.example", "Mei Tanaka", Role.MEMBER, "Research", used_share=0.85),
    Person("jonas.keller@acme.example", "Jonas Keller", Role.MEMBER, "Research", used_share=0.2),
    Person("sofia.alvarez@acme.example", "Sofia Alvarez", Role.MEMBER, "Support", used_share=0.45),
    # Nearly out of tokens: well under the organization's 20% low-balance mark.
    Person("tom.becker@acme.example", "Tom Becker", Role.MEMBER, "Support", used_share=0.96),
    Person("amara.okafor@acme.example", "Amara Okafor", Role.MEMBER, "Support", used_share=0.7),
    Person("noah.fischer@acme.example", "Noah Fischer", Role.MEMBER, None, 50_000, 0.3),
)

GLOBEX_PEOPLE = (
    Person("root@tokendesk.example", "Robin Root", Role.SUPER_ADMIN),
    Person("elena.petrova@globex.example", "Elena Petrova", Role.ORG_ADMIN, used_share=0.1),
    Person("marcus.lee@globex.example", "Marcus Lee", Role.MEMBER, used_share=0.4),
)

# (email, amount, reason); the admin decides the first two, the rest stay pending.
APPROVED = (
    "lukas.berger@acme.example",
    80_000,
    "Benchmarking prompt variants for the vision pipeline before the sprint review.",
    "Approved for the benchmark sprint.",
)
REJECTED = (
    "jonas.keller@acme.example",
    250_000,
    "I'd like to generate the whole regression test suite with the largest model.",
    "Please try gpt-4o-mini first and come back with an estimate.",
)
PENDING = (
    (
        "tom.becker@acme.example",
        100_000,
        "End-of-quarter ticket backlog: summarising long customer threads eats tokens.",
    ),
    (
        "mei.tanaka@acme.example",
        150_000,
        "Literature review for the grasping paper, about forty long PDFs to summarise.",
    ),
    (
        "amara.okafor@acme.example",
        40_000,
        "Drafting the new help-center articles in English, German and Spanish.",
    ),
)


@dataclass(frozen=True)
class DemoLogin:
    email: str
    name: str
    role: str
    organization: str
    team: str | None
    # Only known right after seeding: keys are stored hashed.
    api_key: str | None


@dataclass(frozen=True)
class DemoInfo:
    created: bool
    organizations: tuple[str, ...]
    logins: tuple[DemoLogin, ...]


async def seed_demo(database: Database, *, now: datetime | None = None) -> DemoInfo:
    """Create the demo organizations once; on later calls list their logins only."""
    # One argon2 hash for every demo account: the password is public anyway, and hashing
    # a dozen times would hold the write transaction for seconds.
    password_hash = await hash_password(DEMO_PASSWORD)
    async with database.transaction() as session:
        existing = await session.scalar(
            select(Organization.id).where(Organization.name == DEMO_ORGANIZATION)
        )
        if existing is not None:
            return DemoInfo(
                created=False,
                organizations=(DEMO_ORGANIZATION, SECOND_ORGANIZATION),
                logins=await _existing_logins(session),
            )
        now = now or utcnow()
        rng = random.Random(20240601)
        logins = await _seed_acme(session, rng=rng, password_hash=password_hash, now=now)
        logins += await _seed_globex(session, rng=rng, password_hash=password_hash, now=now)
    return DemoInfo(
        created=True, organizations=(DEMO_ORGANIZATION, SECOND_ORGANIZATION), logins=logins
    )


async def _existing_logins(session: AsyncSession) -> tuple[DemoLogin, ...]:
    emails = [p.email for p in ACME_PEOPLE + GLOBEX_PEOPLE]
    rows = await session.execute(
        select(User, Organization.name, Team.name)
        .join(Organization, Organization.id == User.organization_id)
        .outerjoin(Team, Team.id == User.team_id)
        .where(User.email.in_(emails))
    )
    found = {
        user.email: DemoLogin(user.email, user.name, user.role, org, team, None)
        for user, org, team in rows
    }
    return tuple(found[email] for email in emails if email in found)


async def _create_people(
    session: AsyncSession,
    *,
    org: Organization,
    people: tuple[Person, ...],
    teams: dict[str, Team],
    password_hash: str,
    now: datetime,
) -> tuple[dict[str, User], list[DemoLogin]]:
    users: dict[str, User] = {}
    logins: list[DemoLogin] = []
    for person in people:
        team = teams[person.team] if person.team else None
        user = await create_user(
            session,
            organization_id=org.id,
            email=person.email,
            name=person.name,
            role=person.role,
            team_id=team.id if team else None,
            allocation_override=person.allocation,
            now=now,
        )
        user.password_hash = password_hash
        _, key = await issue_api_key(session, user=user, name="demo")
        users[person.email] = user
        logins.append(DemoLogin(person.email, person.name, user.role, org.name, person.team, key))
    return users, logins


async def _seed_acme(
    session: AsyncSession, *, rng: random.Random, password_hash: str, now: datetime
) -> tuple[DemoLogin, ...]:
    org = await create_organization(
        session,
        name=DEMO_ORGANIZATION,
        default_allocation=200_000,
        reset_day=1,
        timezone="Europe/Berlin",
        max_request=500_000,
        low_balance_percent=20,
    )
    teams = {
        "Research": await create_team(
            session, organization_id=org.id, name="Research", default_allocation=300_000
        ),
        "Support": await create_team(session, organization_id=org.id, name="Support"),
    }
    users, logins = await _create_people(
        session, org=org, people=ACME_PEOPLE, teams=teams, password_hash=password_hash, now=now
    )
    await add_team_owner(session, team=teams["Research"], user=users["owner@acme.example"])
    await _record_usage(session, org=org, people=ACME_PEOPLE, users=users, rng=rng, now=now)
    await _requests(session, users=users, now=now)
    return tuple(logins)


async def _requests(session: AsyncSession, *, users: dict[str, User], now: datetime) -> None:
    """Two requests the admin decided earlier this period and a few still waiting.

    They are dated back inside the current period so the queue shows real ages.
    """
    start = (await ledger.get_balance(session, user_id=users[APPROVED[0]].id, now=now)).period_start

    def at(share: float) -> datetime:
        return start + (now - start) * share

    admin = await build_actor(session, users["admin@acme.example"])
    for (email, amount, reason, note), asked in ((APPROVED, 0.3), (REJECTED, 0.5)):
        requester = await build_actor(session, users[email])
        request = await decisions.submit(
            session, actor=requester, amount=amount, reason=reason, now=at(asked)
        )
        decide = decisions.approve if email == APPROVED[0] else decisions.reject
        await decide(session, actor=admin, request_id=request.id, note=note, now=at(asked + 0.05))
    for (email, amount, reason), asked in zip(PENDING, (0.8, 0.9, 0.97), strict=True):
        requester = await build_actor(session, users[email])
        await decisions.submit(
            session, actor=requester, amount=amount, reason=reason, now=at(asked)
        )


async def _seed_globex(
    session: AsyncSession, *, rng: random.Random, password_hash: str, now: datetime
) -> tuple[DemoLogin, ...]:
    org = await create_organization(
        session,
        name=SECOND_ORGANIZATION,
        default_allocation=100_000,
        reset_day=15,
        timezone="America/New_York",
        max_request=250_000,
    )
    users, logins = await _create_people(
        session, org=org, people=GLOBEX_PEOPLE, teams={}, password_hash=password_hash, now=now
    )
    await _record_usage(session, org=org, people=GLOBEX_PEOPLE, users=users, rng=rng, now=now)
    return tuple(logins)


async def _record_usage(
    session: AsyncSession,
    *,
    org: Organization,
    people: tuple[Person, ...],
    users: dict[str, User],
    rng: random.Random,
    now: datetime,
) -> None:
    """Spread each person's share of usage over the part of the period already gone."""
    events: list[UsageInput] = []
    for person in people:
        if not person.used_share:
            continue
        user = users[person.email]
        balance = await ledger.get_balance(session, user_id=user.id, now=now)
        elapsed = now - balance.period_start
        target = int(balance.allocation * person.used_share)
        calls = rng.randint(8, 16)
        cuts = sorted(rng.sample(range(1, target), calls - 1))
        amounts = [b - a for a, b in zip([0, *cuts], [*cuts, target], strict=True)]
        offsets = sorted(rng.random() for _ in amounts)
        for index, (amount, offset) in enumerate(zip(amounts, offsets, strict=True)):
            prompt = amount * rng.randint(55, 80) // 100
            events.append(
                UsageInput(
                    event_id=f"demo-{user.id}-{index}",
                    user_id=user.id,
                    model=rng.choices(MODELS, weights=MODEL_WEIGHTS)[0],
                    prompt_tokens=prompt,
                    completion_tokens=amount - prompt,
                    occurred_at=balance.period_start
                    + timedelta(seconds=elapsed.total_seconds() * offset),
                    source=rng.choice(SOURCES),
                )
            )
    await record_usage(session, organization_id=org.id, events=events, now=now)
