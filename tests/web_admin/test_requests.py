"""The Token Requests page: the queue, its fragments and one-request decisions."""

from __future__ import annotations

import re

import httpx

from tests.factories import World, snapshot
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


class TestQueuePage:
    async def test_pending_tab_lists_pending_requests_with_every_column(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        request_id = await submit(client, world.alice, 7_000, "Quarterly report drafts")
        admin = await login(world.admin)
        page = (await admin.get("/admin/requests")).text
        assert rows(page) == [request_id]
        row = page[page.index(f'id="request-{request_id}"') :]
        row = row[: row.index("</tr>")]
        for expected in ("Alice", "alice@example.com", "Alpha", "50,000", "7,000"):
            assert expected in row
        assert "Quarterly report drafts" in row
        assert re.search(r'<time datetime="[^"]+" title="\d\d \w+ \d{4} \d\d:\d\d UTC">', row)
        assert tab_count(page, "pending") == 1
        assert badge(page) == 1

    async def test_decided_tabs_show_who_decided_when_what_and_why(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        approved = await submit(client, world.alice, 3_000)
        rejected = await submit(client, world.bob, 9_000)
        await client.post(
            f"/api/v1/token-requests/{approved}/approve",
            json={"amount": 2_500, "note": "half now"},
            headers=world.admin.headers,
        )
        await client.post(
            f"/api/v1/token-requests/{rejected}/reject",
            json={"note": "not this month"},
            headers=world.admin.headers,
        )
        owner = await login(world.owner)
        admin = await login(world.admin)
        page = (await admin.get("/admin/requests?status=approved")).text
        assert rows(page) == [approved]
        assert "Admin" in page and "2,500" in page and "half now" in page
        page = (await admin.get("/admin/requests?status=rejected")).text
        assert rows(page) == [rejected]
        assert "not this month" in page
        page = (await admin.get("/admin/requests?status=all")).text
        assert sorted(rows(page)) == sorted([approved, rejected])
        assert tab_count(page, "approved") == 1 and tab_count(page, "all") == 2
        # The owner's All tab holds only what their team asked for.
        assert rows((await owner.get("/admin/requests?status=all")).text) == [approved]

    async def test_team_owner_sees_only_their_teams_rows_and_count(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        alpha = await submit(client, world.alice, 1_000)
        await submit(client, world.bob, 1_000)
        await submit(client, world.nora, 1_000)
        owner = await login(world.owner)
        page = (await owner.get("/admin/requests")).text
        assert rows(page) == [alpha]
        assert badge(page) == 1 and tab_count(page, "pending") == 1
        assert "bob@example.com" not in page and "nora@example.com" not in page

    async def test_nobody_sees_decide_buttons_on_their_own_request(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        own = await submit(client, world.owner, 2_000)
        owner = await login(world.owner)
        admin = await login(world.admin)
        page = (await owner.get("/admin/requests")).text
        assert rows(page) == [own]
        assert f'id="approve-{own}"' not in page and f'id="select-{own}"' not in page
        assert "someone else decides it" in page
        page = (await admin.get("/admin/requests")).text
        assert f'id="approve-{own}"' in page and f'id="select-{own}"' in page

    async def test_search_matches_name_or_email(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        alice = await submit(client, world.alice, 1_000)
        bob = await submit(client, world.bob, 1_000)
        admin = await login(world.admin)
        assert rows((await admin.get("/admin/requests?q=ALI")).text) == [alice]
        assert rows((await admin.get("/admin/requests?q=bob@example")).text) == [bob]
        page = (await admin.get("/admin/requests?q=nobody")).text
        assert rows(page) == [] and "No requests match these filters." in page

    async def test_team_filter_and_sort_by_amount(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        small = await submit(client, world.alice, 1_000)
        large = await submit(client, world.amy, 9_000)
        beta = await submit(client, world.bob, 5_000)
        admin = await login(world.admin)
        by_team = (await admin.get(f"/admin/requests?team_id={world.team_b}")).text
        assert rows(by_team) == [beta]
        largest_first = (await admin.get("/admin/requests?sort=-amount")).text
        assert rows(largest_first) == [large, beta, small]
        oldest_first = (await admin.get("/admin/requests")).text
        assert rows(oldest_first) == [small, large, beta]

    async def test_fifty_rows_per_page_with_pagination(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        ids = await members_with_requests(database, world, 55, team_id=world.team_b)
        admin = await login(world.admin)
        first = (await admin.get("/admin/requests")).text
        assert rows(first) == ids[:50]
        assert "Showing 1\u201350 of 55" in first and "Page 1 of 2" in first
        second = (await admin.get("/admin/requests?page=2")).text
        assert rows(second) == ids[50:]
        assert "Showing 51\u201355 of 55" in second

    async def test_unknown_filter_values_fall_back_instead_of_failing(
        self, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        response = await admin.get("/admin/requests?status=bogus&sort=x&page=-3&team_id=abc")
        assert response.status_code == 200
        assert 'data-tab="pending" aria-current="page"' in response.text


class TestFragments:
    async def test_table_fragment_carries_tabs_and_badge_out_of_band(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        request_id = await submit(client, world.alice, 1_000)
        admin = await login(world.admin)
        response = await admin.htmx_get("/admin/requests/table?status=pending&q=ali")
        assert response.status_code == 200
        html = response.text
        assert html.lstrip().startswith('<section id="queue"')
        assert rows(html) == [request_id]
        assert '<nav id="request-tabs"' in html and 'hx-swap-oob="true"' in html
        assert badge(html) == 1
        assert response.headers["HX-Replace-Url"] == "/admin/requests?status=pending&q=ali"
        assert "<html" not in html

    async def test_badge_fragment_counts_pending_requests_in_the_viewers_scope(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        await submit(client, world.alice, 1_000)
        await submit(client, world.bob, 1_000)
        admin = await login(world.admin)
        owner = await login(world.owner)
        assert badge((await admin.htmx_get("/admin/badge")).text) == 2
        assert badge((await owner.htmx_get("/admin/badge")).text) == 1

    async def test_decide_dialog_prefills_the_requested_amount(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        request_id = await submit(client, world.alice, 4_321, "for the demo")
        admin = await login(world.admin)
        html = (await admin.htmx_get(f"/admin/requests/{request_id}/approve")).text
        assert 'id="decide-amount"' in html and 'value="4321"' in html
        assert 'for="decide-note"' in html and "for the demo" in html
        html = (await admin.htmx_get(f"/admin/requests/{request_id}/reject")).text
        assert 'id="decide-amount"' not in html and 'id="decide-note"' in html


class TestDecide:
    async def test_approve_with_an_edited_amount_grants_that_amount(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        request_id = await submit(client, world.alice, 10_000)
        before = await remaining(client, world.alice)
        admin = await login(world.admin)
        response = await admin.post(
            f"/admin/requests/{request_id}/approve", {"amount": "6,000", "note": "start here"}
        )
        assert response.status_code == 200
        events = triggers(response)
        assert events["admin:close-dialog"] is True and events["admin:refresh"] is True
        assert events["admin:toast"] == {
            "message": "Approved 6,000 tokens for Alice.",
            "kind": "ok",
        }
        assert await remaining(client, world.alice) == before + 6_000
        detail = await client.get(
            f"/api/v1/token-requests/{request_id}", headers=world.alice.headers
        )
        assert detail.json()["approved_amount"] == 6_000
        assert detail.json()["decision_note"] == "start here"

    async def test_an_empty_amount_grants_what_was_asked(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        request_id = await submit(client, world.bob, 2_000)
        before = await remaining(client, world.bob)
        admin = await login(world.admin)
        response = await admin.post(f"/admin/requests/{request_id}/approve", {"amount": ""})
        assert response.status_code == 200
        assert await remaining(client, world.bob) == before + 2_000

    async def test_reject_with_a_note(
        self, client: httpx.AsyncClient, world: World, login: LoginFactory
    ) -> None:
        request_id = await submit(client, world.alice, 10_000)
        before = await remaining(client, world.alice)
        owner = await login(world.owner)
        response = await owner.post(f"/admin/requests/{request_id}/reject", {"note": "next month"})
        assert response.status_code == 200
        assert triggers(response)["admin:toast"] == {
            "message": "Rejected the request from Alice.",
            "kind": "ok",
        }
        detail = await client.get(
            f"/api/v1/token-requests/{request_id}", headers=world.alice.headers
        )
        assert detail.json()["status"] == "rejected"
        assert await remaining(client, world.alice) == before

    async def test_the_second_decider_is_told_who_already_decided(
        self, client: httpx.AsyncClient, database: Database, world: World, login: LoginFactory
    ) -> None:
        request_id = await submit(client, world.alice, 1_000)
        admin = await login(world.admin)
        owner = await login(world.owner)
        first = await admin.post(f"/admin/requests/{request_id}/approve", {"amount": "1000"})
        assert first.status_code == 200
        before = await snapshot(database)
        second = await owner.post(f"/admin/requests/{request_id}/approve", {"amount": "1000"})
        assert second.status_code == 409
        assert "already approved by Admin" in second.text
        assert 'id="decide-amount"' not in second.text
        assert await snapshot(database) == before

    async def test_an_amount_over_the_maximum_is_shown_next_to_the_field(
        self, client: httpx.AsyncClient, database: Database, world: World, login: LoginFactory
    ) -> None:
        request_id = await submit(client, world.alice, 1_000)
        admin = await login(world.admin)
        before = await snapshot(database)
        response = await admin.post(f"/admin/requests/{request_id}/approve", {"amount": "2000000"})
        assert response.status_code == 422
        assert '<p class="field-error" id="decide-amount-error">must be at most 1000000</p>' in (
            response.text
        )
        assert 'aria-invalid="true"' in response.text and 'value="2000000"' in response.text
        assert await snapshot(database) == before

    async def test_an_amount_above_the_requested_one_is_refused_next_to_the_field(
        self, client: httpx.AsyncClient, database: Database, world: World, login: LoginFactory
    ) -> None:
        request_id = await submit(client, world.alice, 1_000)
        admin = await login(world.admin)
        dialog = (await admin.htmx_get(f"/admin/requests/{request_id}/approve")).text
        assert 'max="1000"' in dialog and "At most the 1,000 requested" in dialog
        before = await snapshot(database)
        response = await admin.post(f"/admin/requests/{request_id}/approve", {"amount": "1001"})
        assert response.status_code == 422
        assert (
            'id="decide-amount-error">must be at most the requested 1000 tokens; '
            "to give more, adjust the balance<"
        ) in response.text
        assert await snapshot(database) == before

    async def test_a_non_numeric_amount_is_refused_next_to_the_field(
        self, client: httpx.AsyncClient, database: Database, world: World, login: LoginFactory
    ) -> None:
        request_id = await submit(client, world.alice, 1_000)
        admin = await login(world.admin)
        before = await snapshot(database)
        response = await admin.post(f"/admin/requests/{request_id}/approve", {"amount": "1.5k"})
        assert response.status_code == 422
        assert 'id="decide-amount-error">must be a whole number of tokens<' in response.text
        assert await snapshot(database) == before

    async def test_deciding_your_own_request_is_refused(
        self, client: httpx.AsyncClient, database: Database, world: World, login: LoginFactory
    ) -> None:
        request_id = await submit(client, world.owner, 1_000)
        owner = await login(world.owner)
        before = await snapshot(database)
        response = await owner.post(f"/admin/requests/{request_id}/approve", {"amount": "1000"})
        assert response.status_code == 403
        assert "you cannot decide your own request" in response.text
        assert await snapshot(database) == before

    async def test_a_request_outside_the_owners_teams_is_not_found(
        self, client: httpx.AsyncClient, database: Database, world: World, login: LoginFactory
    ) -> None:
        request_id = await submit(client, world.bob, 1_000)
        owner = await login(world.owner)
        before = await snapshot(database)
        response = await owner.post(f"/admin/requests/{request_id}/reject", {})
        assert response.status_code == 404
        assert f"token request {request_id} not found" in response.text
        assert await snapshot(database) == before
