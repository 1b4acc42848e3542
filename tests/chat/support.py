"""Helpers for the chat tests: a browser-like login through the real login form."""

from __future__ import annotations

import httpx

from tests.accounts.support import CSRF_META, PASSWORD, sign_in
from tests.factories import Person


async def login(client: httpx.AsyncClient, person: Person) -> str:
    """Sign ``person`` in on ``client`` (the cookie stays in its jar); return the CSRF token."""
    response = await sign_in(client, person.email, PASSWORD, next_url="/chat")
    assert response.status_code == 303, response.text
    page = await client.get("/chat")
    assert page.status_code == 200, page.text
    match = CSRF_META.search(page.text)
    assert match is not None
    return match.group(1)
