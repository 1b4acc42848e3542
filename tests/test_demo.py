"""The demo seed: once only, consistent with the ledger, and telling the whole story."""

from __future__ import annotations

from sqlalchemy import func, select

from tests.factories import snapshot
from tokendesk.accounts.models import Organization, Role, User
from tokendesk.accounts.security import verify_password
from tokendesk.db import Database
from tokendesk.demo import DEMO_ORGANIZATION, DEMO_PASSWORD, seed_demo
from tokendesk.ledger import service as ledger
from tokendesk.ledger.doctor import check_balances
from tokendesk.metering.models import UsageEvent
from tokendesk.token_requests.models import RequestStatus, TokenRequest


class TestSeedDemo:
    async def test_seeding_twice_writes_nothing_the_second_time(self, database: Database) -> None:
        first = await seed_demo(database)
        before = await snapshot(database)
        second = await seed_demo(database)
        assert first.created and not second.created
        assert await snapshot(database) == before
        assert [login.email for login in second.logins] == [login.email for login in first.logins]
        assert all(login.api_key is None for login in second.logins)

    async def test_the_ledger_agrees_with_every_balance(self, database: Database) -> None:
        await seed_demo(database)
        async with database.transaction(write=False) as s:
            assert await check_balances(s) == []

    async def test_every_login_has_the_demo_password_and_a_working_key(
        self, database: Database
    ) -> None:
        info = await seed_demo(database)
        async with database.transaction(write=False) as s:
            users = {u.email: u for u in await s.scalars(select(User))}
        assert {login.email for login in info.logins} == set(users)
        assert all(login.api_key and login.api_key.startswith("td_") for login in info.logins)
        for password_hash in {user.password_hash for user in users.values()}:
            assert await verify_password(password_hash, DEMO_PASSWORD)
        roles = {login.email: login.role for login in info.logins}
        assert roles["admin@acme.example"] == Role.ORG_ADMIN
        assert roles["owner@acme.example"] == Role.TEAM_OWNER
        assert roles["root@tokendesk.example"] == Role.SUPER_ADMIN
        members = [login for login in info.logins if login.organization == DEMO_ORGANIZATION]
        assert sum(login.role == Role.MEMBER for login in members) >= 6
        assert {login.team for login in members if login.role == Role.MEMBER} == {
            "Research",
            "Support",
            None,
        }

    async def test_the_queue_holds_pending_and_decided_requests(self, database: Database) -> None:
        await seed_demo(database)
        async with database.transaction(write=False) as s:
            counts = dict(
                (
                    await s.execute(
                        select(TokenRequest.status, func.count()).group_by(TokenRequest.status)
                    )
                ).all()
            )
            admin = await s.scalar(select(User.id).where(User.email == "admin@acme.example"))
            deciders = set(
                await s.scalars(
                    select(TokenRequest.decided_by_id).where(
                        TokenRequest.status != RequestStatus.PENDING
                    )
                )
            )
        assert counts[RequestStatus.PENDING] >= 2
        assert counts[RequestStatus.APPROVED] == 1
        assert counts[RequestStatus.REJECTED] == 1
        assert deciders == {admin}

    async def test_usage_is_spread_over_the_period_and_one_member_runs_low(
        self, database: Database
    ) -> None:
        await seed_demo(database)
        async with database.transaction() as s:
            org = await s.scalar(select(Organization).where(Organization.name == DEMO_ORGANIZATION))
            assert org is not None
            events = list(
                await s.scalars(select(UsageEvent).where(UsageEvent.organization_id == org.id))
            )
            tom = await s.scalar(select(User.id).where(User.email == "tom.becker@acme.example"))
            assert tom is not None
            balance = await ledger.get_balance(s, user_id=tom)
            remaining, allocation = balance.remaining, balance.allocation
        assert len(events) >= 50
        assert len({e.user_id for e in events}) >= 8
        assert len({e.model for e in events}) >= 2
        assert all(balance.period_start <= e.occurred_at <= e.recorded_at for e in events)
        assert 0 < remaining < allocation * org.low_balance_percent // 100
