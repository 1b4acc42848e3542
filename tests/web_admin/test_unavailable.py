"""The web pages when SQLite cannot write (its file made immutable): an htmx action
gets a 503 whose toast names the cause, a posted form a page saying so, never a 500;
the pages themselves still open."""

from __future__ import annotations

import httpx

from tests.accounts.support import PASSWORD, another_browser, sign_in
from tests.factories import World
from tests.ops.faults import immutable
from tests.web_admin.conftest import LoginFactory, submit, triggers
from tokendesk.db import Database

CAUSE = "the database cannot be written"


async def test_pages_answer_a_refused_write_with_its_cause_and_keep_reading(
    sqlite_only: None,
    database: Database,
    client: httpx.AsyncClient,
    world: World,
    login: LoginFactory,
    db_url: str,
) -> None:
    request_id = await submit(client, world.alice, 3_000)
    admin = await login(world.admin)
    async with another_browser(client) as browser:
        with immutable(db_url):
            r = await admin.post(f"/admin/requests/{request_id}/approve", {"amount": "3000"})
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "30"
            toast = triggers(r)["admin:toast"]
            assert toast["kind"] == "error" and toast["message"].startswith(CAUSE)
            # Signing in writes a session: the browser is shown why it cannot.
            form = await sign_in(browser, world.bob.email, PASSWORD)
            assert form.status_code == 503, form.text
            assert form.headers["content-type"].startswith("text/html")
            assert CAUSE in form.text and "Nothing was changed" in form.text
            page = await admin.get("/admin/requests")
            assert page.status_code == 200
            assert f'id="request-{request_id}"' in page.text
        r = await admin.post(f"/admin/requests/{request_id}/approve", {"amount": "3000"})
        assert r.status_code == 200, r.text
