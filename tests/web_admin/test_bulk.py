"""Bulk decisions: the confirmation's count and total, "all matching", the summary."""

from __future__ import annotations

import httpx

from tests.factories import World, make_world, snapshot
from tests.web_admin.conftest import (
    LoginFactory,
    badge,
    members_with_requests,
    remaining,
    rows,
    submit,
    tab_count,
    triggers,
)
from tokendesk.db import Database


class TestBulk:
    async def test_confirmation_states_the_number_of_requests_and_total_tokens(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        a = await submit(client, world.alice, 1_000)
        b = await submit(client, world.bob, 2_500)
        admin = await login(world.admin)
        html = (await admin.htmx_get(f"/admin/requests/bulk?action=approve&ids={a},{b}")).text
        assert "Approve 2 requests?" in html
        assert "<strong>3,500 tokens</strong> in total across <strong>2 requests</strong>" in html
        assert f'name="ids" value="{a},{b}"' in html

    async def test_confirmation_leaves_out_requests_no_longer_pending(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        a = await submit(client, world.alice, 1_000)
        b = await submit(client, world.bob, 2_500)
        await client.post(f"/api/v1/token-requests/{b}/cancel", headers=world.bob.headers)
        admin = await login(world.admin)
        html = (await admin.htmx_get(f"/admin/requests/bulk?action=reject&ids={a},{b}")).text
        assert "Reject 1 request?" in html
        assert "1 selected request is no longer pending and left out." in html
        assert f'name="ids" value="{a}"' in html

    async def test_all_matching_selects_every_pending_request_under_the_filters(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        beta = await members_with_requests(
            database, world, 60, team_id=world.team_b, amount=100, prefix="beta"
        )
        await members_with_requests(database, world, 5, team_id=world.team_a, prefix="alpha")
        admin = await login(world.admin)
        html = (
            await admin.htmx_get(
                f"/admin/requests/bulk?action=reject&matching=1&team_id={world.team_b}"
            )
        ).text
        assert "Reject 60 requests?" in html
        total = sum(100 + index for index in range(60))
        assert f"<strong>{total:,} tokens</strong>" in html
        assert f'name="ids" value="{",".join(str(i) for i in beta)}"' in html

    async def test_bulk_reports_decided_and_skipped_with_reasons(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        a = await submit(client, world.alice, 1_000)
        b = await submit(client, world.amy, 2_000)
        c = await submit(client, world.bob, 3_000)
        await client.post(
            f"/api/v1/token-requests/{b}/approve", json={}, headers=world.owner.headers
        )
        alice_before = await remaining(client, world.alice)
        admin = await login(world.admin)
        response = await admin.post(
            "/admin/requests/bulk", {"action": "approve", "ids": f"{a},{b},{c}", "note": "ok"}
        )
        assert response.status_code == 200
        html = response.text
        assert "Approved 2 requests" in html
        assert "<strong>1</strong> skipped:" in html
        assert "already approved" in html and f"#{b}" in html
        events = triggers(response)
        assert events["admin:refresh"] is True and events["admin:clear-selection"] is True
        assert await remaining(client, world.alice) == alice_before + 1_000

    async def test_bulk_reject_of_thirty_requests_decides_them_all(
        self, client: httpx.AsyncClient, database: Database, world: World, login: LoginFactory
    ) -> None:
        ids = await members_with_requests(database, world, 30, team_id=world.team_b)
        admin = await login(world.admin)
        response = await admin.post(
            "/admin/requests/bulk",
            {"action": "reject", "ids": ",".join(map(str, ids)), "note": "budget freeze"},
        )
        assert "Rejected 30 requests" in response.text
        assert "Nothing was skipped." in response.text
        page = (await admin.get("/admin/requests")).text
        assert rows(page) == [] and badge(page) == 0
        assert tab_count(page, "rejected") == 30

    async def test_team_owner_bulk_skips_what_is_outside_their_teams(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        alpha = await submit(client, world.alice, 1_000)
        beta = await submit(client, world.bob, 1_000)
        owner = await login(world.owner)
        response = await owner.post(
            "/admin/requests/bulk", {"action": "reject", "ids": f"{alpha},{beta}"}
        )
        assert "Rejected 1 request" in response.text
        assert "not found" in response.text and f"#{beta}" in response.text

    async def test_a_pool_too_small_for_the_batch_is_explained_and_nothing_is_decided(
        self, client: httpx.AsyncClient, database: Database, login: LoginFactory
    ) -> None:
        # Allocations alone take 355,000 of the pool: 5,000 are left to grant.
        world = await make_world(database, pool=360_000)
        a = await submit(client, world.alice, 3_000)
        b = await submit(client, world.bob, 4_000)
        admin = await login(world.admin)
        before = await snapshot(database)
        response = await admin.post(
            "/admin/requests/bulk", {"action": "approve", "ids": f"{a},{b}"}
        )
        assert response.status_code == 409
        assert "token pool has 5000 tokens left this period" in response.text
        assert 'role="alert"' in response.text and "Approve 2 requests?" in response.text
        assert await snapshot(database) == before

    async def test_bulk_without_csrf_token_changes_nothing(
        self, client: httpx.AsyncClient, database: Database, world: World, login: LoginFactory
    ) -> None:
        request_id = await submit(client, world.alice, 1_000)
        admin = await login(world.admin)
        before = await snapshot(database)
        response = await admin.post(
            "/admin/requests/bulk", {"action": "approve", "ids": str(request_id)}, csrf=False
        )
        assert response.status_code == 403
        assert await snapshot(database) == before

    async def test_bulk_with_nothing_selected_says_so(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        before = await snapshot(database)
        response = await admin.post("/admin/requests/bulk", {"action": "approve", "ids": ""})
        assert response.status_code == 422
        assert "ids: give between 1 and" in response.text
        assert await snapshot(database) == before
