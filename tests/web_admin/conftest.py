"""Browser-like sessions against the admin center: log in with a password, keep the cookie."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from tests.accounts.support import CSRF_META, PASSWORD, sign_in
from tests.factories import Person, World
from tokendesk.accounts.auth import build_actor
from tokendesk.accounts.users import create_user
from tokendesk.db import Database
from tokendesk.token_requests import decisions


class Browser:
    """An httpx client holding one person's session cookie and CSRF token."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.csrf = ""

    async def get(self, url: str, **kwargs: object) -> httpx.Response:
        return await self.http.get(url, **kwargs)  # type: ignore[arg-type]

    async def htmx_get(self, url: str) -> httpx.Response:
        return await self.http.get(url, headers={"HX-Request": "true"})

    async def post(
        self, url: str, data: dict[str, str] | None = None, *, csrf: bool = True
    ) -> httpx.Response:
        headers = {"HX-Request": "true"}
        if csrf:
            headers["X-CSRF-Token"] = self.csrf
        return await self.http.post(url, data=data or {}, headers=headers)

    async def refresh_csrf(self) -> None:
        page = await self.http.get("/login")
        match = CSRF_META.search(page.text)
        assert match, "the page carries the session's CSRF token"
        self.csrf = match.group(1)


LoginFactory = Callable[[Person], Awaitable[Browser]]


@pytest.fixture
async def login(client: httpx.AsyncClient) -> AsyncIterator[LoginFactory]:
    opened: list[httpx.AsyncClient] = []

    async def log_in(person: Person) -> Browser:
        http = httpx.AsyncClient(transport=client._transport, base_url="http://test")
        opened.append(http)
        response = await sign_in(http, person.email, PASSWORD, next_url="/admin")
        assert response.status_code == 303, response.text
        browser = Browser(http)
        await browser.refresh_csrf()
        return browser

    yield log_in
    for http in opened:
        await http.aclose()


async def members_with_requests(
    database: Database,
    world: World,
    count: int,
    *,
    team_id: int | None,
    amount: int = 1_000,
    prefix: str = "member",
) -> list[int]:
    """``count`` new members of ``team_id``, each with one pending request; their ids in order."""
    ids: list[int] = []
    async with database.transaction() as session:
        for index in range(count):
            user = await create_user(
                session,
                organization_id=world.org_id,
                email=f"{prefix}{index:03d}@example.com",
                name=f"{prefix.capitalize()} {index:03d}",
                team_id=team_id,
            )
            actor = await build_actor(session, user)
            request = await decisions.submit(
                session, actor=actor, amount=amount + index, reason=f"reason {index}"
            )
            ids.append(request.id)
    return ids


async def submit(client: httpx.AsyncClient, person: Person, amount: int, reason: str = "") -> int:
    response = await client.post(
        "/api/v1/token-requests",
        json={"amount": amount, "reason": reason or None},
        headers=person.headers,
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def remaining(client: httpx.AsyncClient, person: Person) -> int:
    response = await client.get("/api/v1/me", headers=person.headers)
    assert response.status_code == 200, response.text
    return int(response.json()["balance"]["remaining"])


ROW = re.compile(r'<tr id="request-(\d+)"')


def rows(html: str) -> list[int]:
    return [int(found) for found in ROW.findall(html)]


def tab_count(html: str, tab: str) -> int:
    match = re.search(
        rf'data-tab="{tab}"[^>]*>\s*\w+ <span class="tab-count" data-count="(\d+)"', html
    )
    assert match, f"tab {tab} not found"
    return int(match.group(1))


def badge(html: str) -> int:
    match = re.search(r'id="pending-badge"[^>]*data-count="(\d+)"', html)
    assert match, "badge not found"
    return int(match.group(1))


def triggers(response: httpx.Response) -> dict[str, object]:
    return dict(json.loads(response.headers.get("HX-Trigger", "{}")))
