"""Migrations that carry data over, on each backend, from the revision before them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.web_admin.acme_site import own_postgres_database
from tokendesk.accounts.users import create_user
from tokendesk.db import Database
from tokendesk.errors import Conflict
from tokendesk.migrations.runner import MigrationRefused, head_revision, upgrade_async


@pytest.fixture
def scratch_url(backend: str, db_url: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of the backend under test, for migrating step by step."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'scratch.db'}"
    else:
        with own_postgres_database(db_url, "migrations") as url:
            yield url


async def at_0006(url: str, *emails: str, revision: str = "0006") -> None:
    """A database at 0006 (or ``revision``) with one organization and its users."""
    await upgrade_async(url, revision)
    database = Database(url)
    try:
        async with database.transaction() as s:
            await s.execute(
                text(
                    "INSERT INTO organizations (id, name, default_allocation, reset_day, "
                    "timezone, max_request, low_balance_percent, created_at) "
                    "VALUES (1, 'Acme', 1, 1, 'UTC', 1, 20, CURRENT_TIMESTAMP)"
                )
            )
            for index, email in enumerate(emails, start=1):
                await s.execute(
                    text(
                        "INSERT INTO users (id, organization_id, email, name, role, is_active, "
                        "created_at) VALUES (:id, 1, :email, 'X', 'member', true, "
                        "CURRENT_TIMESTAMP)"
                    ),
                    {"id": index, "email": email},
                )
    finally:
        await database.dispose()


async def column(url: str, sql: str) -> list[object]:
    database = Database(url)
    try:
        async with database.transaction(write=False) as s:
            return list((await s.execute(text(sql))).scalars())
    finally:
        await database.dispose()


class TestLowerCaseEmails:
    async def test_an_empty_database_upgrades_to_the_head(self, scratch_url: str) -> None:
        await upgrade_async(scratch_url)
        head = head_revision()
        assert await column(scratch_url, "SELECT version_num FROM alembic_version") == [head]

    async def test_mixed_case_addresses_are_lower_cased(self, scratch_url: str) -> None:
        await at_0006(scratch_url, "Ann@Corp.Local", "bob@corp.local", "Jörg@Bü.CH")
        await upgrade_async(scratch_url)
        emails = await column(scratch_url, "SELECT email FROM users ORDER BY id")
        assert emails == ["ann@corp.local", "bob@corp.local", "jörg@bü.ch"]

    async def test_the_unique_constraint_then_holds_whatever_the_case(
        self, scratch_url: str
    ) -> None:
        await at_0006(scratch_url, "Ann@Corp.Local")
        await upgrade_async(scratch_url)
        database = Database(scratch_url)
        try:
            with pytest.raises(Conflict, match=re.escape("ann@corp.local")):
                async with database.transaction() as s:
                    await create_user(s, organization_id=1, email="ANN@corp.local", name="A")
        finally:
            await database.dispose()

    async def test_addresses_differing_only_in_case_stop_it_naming_them(
        self, scratch_url: str
    ) -> None:
        await at_0006(scratch_url, "Ann@Corp.Local", "ann@corp.local", "bob@corp.local")
        with pytest.raises(
            MigrationRefused, match=re.escape("Ann@Corp.Local and ann@corp.local")
        ) as refused:
            await upgrade_async(scratch_url)
        assert "bob" not in str(refused.value)
        assert await column(scratch_url, "SELECT version_num FROM alembic_version") == ["0006"]
        emails = await column(scratch_url, "SELECT email FROM users ORDER BY id")
        assert emails == ["Ann@Corp.Local", "ann@corp.local", "bob@corp.local"]


class TestUsageEndpoint:
    async def test_gateway_usage_was_chat_and_reported_usage_names_no_endpoint(
        self, scratch_url: str
    ) -> None:
        await at_0006(scratch_url, "ann@corp.local", revision="0008")
        database = Database(scratch_url)
        try:
            async with database.transaction() as s:
                for event_id, source in (("a", "gateway"), ("b", "api")):
                    await s.execute(
                        text(
                            "INSERT INTO usage_events (organization_id, event_id, user_id, "
                            "model, prompt_tokens, completion_tokens, total_tokens, source, "
                            "occurred_at, day, recorded_at, balance_after) VALUES (1, :id, 1, "
                            "'m', 1, 1, 2, :source, CURRENT_TIMESTAMP, CURRENT_DATE, "
                            "CURRENT_TIMESTAMP, 0)"
                        ),
                        {"id": event_id, "source": source},
                    )
        finally:
            await database.dispose()
        await upgrade_async(scratch_url)
        endpoints = await column(scratch_url, "SELECT endpoint FROM usage_events ORDER BY event_id")
        assert endpoints == ["chat", None]


class TestUsageTokenKinds:
    async def test_events_recorded_before_count_no_cached_or_reasoning_tokens(
        self, scratch_url: str
    ) -> None:
        await at_0006(scratch_url, "ann@corp.local", revision="0009")
        database = Database(scratch_url)
        try:
            async with database.transaction() as s:
                await s.execute(
                    text(
                        "INSERT INTO usage_events (organization_id, event_id, user_id, model, "
                        "prompt_tokens, completion_tokens, total_tokens, source, endpoint, "
                        "occurred_at, day, recorded_at, balance_after) VALUES (1, 'a', 1, 'm', "
                        "5, 7, 12, 'gateway', 'chat', CURRENT_TIMESTAMP, CURRENT_DATE, "
                        "CURRENT_TIMESTAMP, 0)"
                    )
                )
        finally:
            await database.dispose()
        await upgrade_async(scratch_url)
        kinds = await column(
            scratch_url, "SELECT cached_tokens + 10 * reasoning_tokens FROM usage_events"
        )
        assert kinds == [0]


class TestUsageEndpointDaily:
    async def test_the_endpoint_rollup_and_the_kinds_sums_are_built_from_the_events(
        self, scratch_url: str
    ) -> None:
        await at_0006(scratch_url, "ann@corp.local", revision="0011")
        database = Database(scratch_url)
        day = "'2030-01-02'"
        try:
            async with database.transaction() as s:
                for event_id, endpoint, cached, reasoning in (
                    ("a", "'chat'", 3, 2),
                    ("b", "'chat'", 1, 0),
                    ("c", "NULL", 0, 0),
                ):
                    await s.execute(
                        text(
                            "INSERT INTO usage_events (organization_id, event_id, user_id, "
                            "model, prompt_tokens, completion_tokens, total_tokens, source, "
                            "endpoint, cached_tokens, reasoning_tokens, occurred_at, day, "
                            f"recorded_at, balance_after) VALUES (1, '{event_id}', 1, 'm', 5, "
                            f"7, 12, 'gateway', {endpoint}, {cached}, {reasoning}, "
                            f"CURRENT_TIMESTAMP, {day}, CURRENT_TIMESTAMP, 0)"
                        )
                    )
                await s.execute(
                    text(
                        "INSERT INTO usage_team_daily (organization_id, day, team_id, model, "
                        "prompt_tokens, completion_tokens, total_tokens, calls) VALUES "
                        f"(1, {day}, 0, 'm', 15, 21, 36, 3)"
                    )
                )
                await s.execute(
                    text(
                        "INSERT INTO usage_model_daily (organization_id, day, model, "
                        "prompt_tokens, completion_tokens, total_tokens, calls) VALUES "
                        f"(1, {day}, 'm', 15, 21, 36, 3)"
                    )
                )
        finally:
            await database.dispose()
        await upgrade_async(scratch_url)
        endpoints = await column(
            scratch_url,
            "SELECT endpoint || ':' || prompt_tokens || ':' || cached_tokens || ':' "
            "|| reasoning_tokens || ':' || total_tokens || ':' || calls "
            "FROM usage_endpoint_daily ORDER BY endpoint",
        )
        assert endpoints == [":5:0:0:12:1", "chat:10:4:2:24:2"]
        by_team = await column(
            scratch_url,
            "SELECT team_id || ':' || endpoint || ':' || cached_tokens || ':' || calls "
            "FROM usage_team_endpoint_daily ORDER BY endpoint",
        )
        assert by_team == ["0::0:1", "0:chat:4:2"]
        for table in ("usage_team_daily", "usage_model_daily"):
            kinds = await column(
                scratch_url, f"SELECT cached_tokens || ':' || reasoning_tokens FROM {table}"
            )
            assert kinds == ["4:2"]
