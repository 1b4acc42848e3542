"""The analytics API (JSON and CSV) and the admin page with its CSV exports."""

from __future__ import annotations

import csv
import io

import httpx
import pytest

from tests.analytics.conftest import Usage
from tests.factories import World
from tests.web_admin.conftest import LoginFactory

FIGURES = ["top-users", "top-teams", "usage-over-time", "by-model", "requests", "forecast"]
TABLES = [*FIGURES, "requesters"]
# Every test here asks about March 2030, the month the conftest recorded.
MARCH = "period=custom&from=2030-03-01&to=2030-03-31"


def rows_of(response: httpx.Response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(response.text)))


class TestJsonApi:
    @pytest.mark.parametrize("figure", FIGURES)
    async def test_every_figure_answers_json_for_an_admin(
        self, client: httpx.AsyncClient, world: World, usage: Usage, figure: str
    ) -> None:
        response = await client.get(
            f"/api/v1/analytics/{figure}?{MARCH}", headers=world.admin.headers
        )

        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")

    async def test_top_users_json_carries_the_range_and_the_ranking(
        self, client: httpx.AsyncClient, world: World, usage: Usage
    ) -> None:
        response = await client.get(
            f"/api/v1/analytics/top-users?{MARCH}&limit=2", headers=world.admin.headers
        )

        body = response.json()
        assert body["range"]["first_day"] == "2030-03-01"
        assert body["range"]["days"] == 31
        assert [(u["email"], u["tokens"]) for u in body["items"]] == [
            ("nora@example.com", 4700),
            ("bob@example.com", 3000),
        ]
        assert body["total_tokens"] == 11_600

    async def test_a_team_owner_gets_their_teams_and_a_member_is_refused(
        self, client: httpx.AsyncClient, world: World, usage: Usage
    ) -> None:
        owners = await client.get(
            f"/api/v1/analytics/top-teams?{MARCH}", headers=world.owner.headers
        )
        members = await client.get(
            f"/api/v1/analytics/top-teams?{MARCH}", headers=world.alice.headers
        )

        assert [t["name"] for t in owners.json()["items"]] == ["Alpha"]
        assert members.status_code == 403

    @pytest.mark.parametrize(
        ("query", "field"),
        [
            ("period=fortnight", "period"),
            ("period=custom&to=2030-03-31", "from"),
            ("period=custom&from=2030-03-31&to=2030-03-01", "to"),
            ("from=yesterday&to=2030-03-01", "from"),
            ("team_id=-1", "team_id"),
            ("limit=0", "limit"),
            ("stack=user", "stack"),
        ],
    )
    async def test_bad_filters_answer_422_naming_the_field(
        self, client: httpx.AsyncClient, world: World, query: str, field: str
    ) -> None:
        path = "usage-over-time" if "stack" in query else "top-users"
        response = await client.get(
            f"/api/v1/analytics/{path}?{query}", headers=world.admin.headers
        )

        assert response.status_code == 422
        assert response.json()["detail"].startswith(f"{field}: ")

    async def test_signed_out_callers_are_refused(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/api/v1/analytics/by-model")

        assert response.status_code == 401


class TestCsvApi:
    async def test_top_users_csv_has_a_header_and_every_user(
        self, client: httpx.AsyncClient, world: World, usage: Usage
    ) -> None:
        response = await client.get(
            f"/api/v1/analytics/top-users.csv?{MARCH}", headers=world.admin.headers
        )

        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        assert (
            'filename="tokendesk-top-users-2030-03-01-to-2030-03-31.csv"'
            in (response.headers["content-disposition"])
        )
        header, *rows = rows_of(response)
        assert header[:6] == ["user_id", "name", "email", "team_name", "tokens", "calls"]
        assert [(row[2], row[4]) for row in rows] == [
            ("nora@example.com", "4700"),
            ("bob@example.com", "3000"),
            ("amy@example.com", "2000"),
            ("alice@example.com", "1800"),
            ("owner@example.com", "100"),
        ]
        alice = dict(zip(header, rows[3], strict=True))
        # A custom range pro-rates the allocation by today's period, whatever month that is.
        share = 1800 / int(alice["range_allocation"])
        assert alice["share_of_allocation"] == f"{share:.4f}"
        assert (alice["allocation"], alice["requests"], alice["granted"]) == ("50000", "2", "10000")

    async def test_usage_over_time_csv_has_a_row_per_day_and_a_column_per_stack(
        self, client: httpx.AsyncClient, world: World, usage: Usage
    ) -> None:
        response = await client.get(
            f"/api/v1/analytics/usage-over-time.csv?{MARCH}&stack=model",
            headers=world.admin.headers,
        )

        header, *rows = rows_of(response)
        assert header == ["day", "total", "gpt-4o", "claude"]
        assert len(rows) == 31
        assert rows[4] == ["2030-03-05", "3500", "3000", "500"]

    @pytest.mark.parametrize("table", TABLES)
    async def test_every_table_exports(
        self, client: httpx.AsyncClient, world: World, usage: Usage, table: str
    ) -> None:
        response = await client.get(
            f"/api/v1/analytics/{table}.csv?{MARCH}", headers=world.admin.headers
        )

        header, *rows = rows_of(response)
        assert response.status_code == 200
        assert header and rows

    async def test_an_unknown_table_is_refused(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.get("/api/v1/analytics/salaries.csv", headers=world.admin.headers)

        assert response.status_code == 422


class TestAdminPage:
    @pytest.mark.parametrize("who", ["admin", "owner", "root"])
    async def test_the_page_renders_tables_and_chart_data_for_each_admin_role(
        self, world: World, usage: Usage, login: LoginFactory, who: str
    ) -> None:
        browser = await login(world.people[who])

        response = await browser.get(f"/admin/analytics?{MARCH}")

        assert response.status_code == 200, response.text[-2000:]
        for marker in ('id="top-users-table"', 'id="usage-chart-data"', 'id="forecast-table"'):
            assert marker in response.text
        assert 'aria-current="page"' in response.text

    async def test_the_page_shows_the_ranking_of_the_chosen_range(
        self, world: World, usage: Usage, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)

        march = await admin.get(f"/admin/analytics?{MARCH}")
        february = await admin.get("/admin/analytics?period=custom&from=2030-02-01&to=2030-02-28")

        assert march.text.index("Nora") < march.text.index("Bob")
        assert '<div class="value" id="figure-tokens">11,600</div>' in march.text
        assert '<div class="value" id="figure-tokens">400</div>' in february.text

    async def test_a_bad_custom_range_shows_the_message_on_the_page(
        self, world: World, usage: Usage, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)

        response = await admin.get("/admin/analytics?period=custom&from=2030-03-05")

        assert response.status_code == 200
        assert "to: required for a custom range" in response.text

    async def test_a_member_gets_the_403_page(
        self, world: World, usage: Usage, login: LoginFactory
    ) -> None:
        alice = await login(world.alice)

        response = await alice.get("/admin/analytics")

        assert response.status_code == 403

    async def test_the_page_exports_csv_with_its_filters(
        self, world: World, usage: Usage, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)

        response = await admin.get(
            f"/admin/analytics/export/by-model.csv?{MARCH}&team_id={world.team_a}"
        )

        assert response.status_code == 200
        assert rows_of(response) == [
            [
                "model",
                "tokens",
                "prompt_tokens",
                "completion_tokens",
                "calls",
                "share_of_tokens",
                "cached_tokens",
                "reasoning_tokens",
            ],
            ["gpt-4o", "3300", "2475", "825", "3", "0.8462", "0", "0"],
            ["claude", "600", "450", "150", "2", "0.1538", "0", "0"],
        ]

    async def test_a_team_owner_cannot_export_another_team(
        self, world: World, usage: Usage, login: LoginFactory
    ) -> None:
        owner = await login(world.owner)

        response = await owner.get(f"/admin/analytics/export/top-users.csv?team_id={world.team_b}")

        assert response.status_code == 403
