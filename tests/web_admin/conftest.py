"""Browser-like sessions against the admin center: log in with a password, keep the cookie."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from tests.factories import Person

PASSWORD = "correct horse battery"
CSRF_META = re.compile(r'<meta name="csrf-token" content="([0-9a-f]+)">')


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
        response = await http.post(
            "/login", data={"email": person.email, "password": PASSWORD, "next": "/admin"}
        )
        assert response.status_code == 303, response.text
        browser = Browser(http)
        await browser.refresh_csrf()
        return browser

    yield log_in
    for http in opened:
        await http.aclose()
