"""Helpers shared by the accounts, audit and allocation tests."""

from __future__ import annotations

import re
from typing import Any

import httpx
from sqlalchemy import func, select

from tests.factories import PASSWORD as PASSWORD
from tests.factories import Person
from tokendesk.accounts.actor import Actor
from tokendesk.accounts.auth import build_actor
from tokendesk.accounts.models import ApiKey, LoginSession, User
from tokendesk.audit.models import AuditEntry
from tokendesk.db import Database
from tokendesk.ledger.doctor import check_balances
from tokendesk.ledger.models import EntryKind, LedgerEntry

API = "/api/v1"
LOGIN_TOKEN = re.compile(r'name="login_token" value="([0-9a-f]+)"')
CSRF_META = re.compile(r'<meta name="csrf-token" content="([0-9a-f]+)">')


async def sign_in(
    http: httpx.AsyncClient, email: str, password: str, *, next_url: str = "/"
) -> httpx.Response:
    """Submit the real sign-in form, fetched first for its CSRF token."""
    form = await http.get("/login")
    match = LOGIN_TOKEN.search(form.text)
    assert match is not None, "the sign-in form carries a CSRF token"
    return await http.post(
        "/login",
        data={"email": email, "password": password, "next": next_url, "login_token": match[1]},
    )


def another_browser(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """A second browser (a cookie jar of its own) on the same app as ``client``."""
    return httpx.AsyncClient(transport=client._transport, base_url="http://test")


async def page_csrf(http: httpx.AsyncClient, path: str = "/settings") -> str:
    """The signed-in session's CSRF token, as a page carries it."""
    page = await http.get(path)
    match = CSRF_META.search(page.text)
    assert match is not None and match[1], page.text[:500]
    return match[1]


def acting_in(person: Person, organization_id: int) -> dict[str, str]:
    """Headers for a super admin working in another organization."""
    return {**person.headers, "X-Organization-Id": str(organization_id)}


async def actor_of(
    database: Database, person: Person, *, organization_id: int | None = None
) -> Actor:
    async with database.transaction(write=False) as s:
        user = await s.get(User, person.id)
        assert user is not None
        return await build_actor(s, user, organization_id=organization_id)


async def entries_of(database: Database, user_id: int, kind: EntryKind) -> list[LedgerEntry]:
    async with database.transaction(write=False) as s:
        rows = await s.scalars(
            select(LedgerEntry)
            .where(LedgerEntry.user_id == user_id, LedgerEntry.kind == kind.value)
            .order_by(LedgerEntry.id)
        )
        return list(rows.all())


async def allocation_changes(database: Database, user_id: int) -> list[int]:
    return [e.amount for e in await entries_of(database, user_id, EntryKind.ALLOCATION_CHANGE)]


async def audit_rows(database: Database, action: str) -> list[AuditEntry]:
    async with database.transaction(write=False) as s:
        rows = await s.scalars(
            select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)
        )
        return list(rows.all())


async def user_of(database: Database, user_id: int) -> User:
    async with database.transaction(write=False) as s:
        user = await s.get(User, user_id)
        assert user is not None
        return user


async def key_id_of(database: Database, person: Person) -> int:
    async with database.transaction(write=False) as s:
        key_id = await s.scalar(select(ApiKey.id).where(ApiKey.user_id == person.id))
        assert key_id is not None
        return int(key_id)


async def ledger_is_consistent(database: Database) -> bool:
    async with database.transaction(write=False) as s:
        return await check_balances(s) == []


def error_fields(body: dict[str, Any]) -> list[str]:
    return [e["field"] for e in body.get("errors", [])]


async def open_sessions(database: Database, user_id: int) -> int:
    async with database.transaction(write=False) as s:
        count = await s.scalar(
            select(func.count()).select_from(LoginSession).where(LoginSession.user_id == user_id)
        )
        return int(count or 0)
