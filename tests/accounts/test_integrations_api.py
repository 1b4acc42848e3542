"""The integrations REST API, and the organization's provisioning settings.

Org admins (and super admins in the organization they act in) manage the keys chat
apps call the gateway with; everyone else is refused. A key is shown once, a
secret never, and a revoked key or a changed header counts from the next call.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.accounts.support import API, acting_in, audit_rows, error_fields
from tests.factories import World, snapshot
from tests.gateway.test_gateway import credentials_heard
from tokendesk.db import Database
from tokendesk.events.bus import InProcessBus
from tokendesk.gateway.model_config import DEMO_MODEL

SECRET = "open-webui-forwarding-secret-0123456789"


async def create(
    client: httpx.AsyncClient, headers: dict[str, str], **fields: Any
) -> httpx.Response:
    return await client.post(f"{API}/integrations", headers=headers, json=fields)


async def created(client: httpx.AsyncClient, world: World, **fields: Any) -> dict[str, Any]:
    response = await create(client, world.admin.headers, **{"name": "Open WebUI", **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def chat(client: httpx.AsyncClient, key: str, **headers: str) -> httpx.Response:
    return await client.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}", **headers},
        json={"model": DEMO_MODEL, "messages": [{"role": "user", "content": "Hi"}]},
    )


class TestCreateIntegration:
    async def test_the_key_is_returned_once_and_the_list_never_shows_it(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        body = await created(client, world, preset="open-webui", jwt_secret=SECRET)
        assert body["key"].startswith("tdi_") and body["prefix"] == body["key"][:11]
        assert (body["preset"], body["jwt_secret_set"]) == ("open-webui", True)
        assert body["created_by"] == world.admin.id and body["revoked_at"] is None
        listed = await client.get(f"{API}/integrations", headers=world.admin.headers)
        assert listed.status_code == 200
        (row,) = listed.json()
        assert "key" not in row and "jwt_secret" not in row
        assert SECRET not in listed.text and body["key"] not in listed.text
        assert row["id"] == body["id"] and row["jwt_secret_set"] is True

    async def test_the_new_key_speaks_for_the_user_its_chat_app_names(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        body = await created(client, world, preset="open-webui")
        response = await chat(
            client,
            body["key"],
            **{"X-OpenWebUI-User-Id": "u-1", "X-OpenWebUI-User-Email": world.alice.email},
        )
        assert response.status_code == 200, response.text

    async def test_header_overrides_are_kept_as_given(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        body = await created(
            client, world, preset="librechat", user_id_header="X-Corp-User", email_header="X-Mail"
        )
        assert (body["user_id_header"], body["email_header"], body["name_header"]) == (
            "X-Corp-User",
            "X-Mail",
            None,
        )
        response = await chat(
            client, body["key"], **{"X-Corp-User": "c-7", "X-Mail": "bob@example.com"}
        )
        assert response.status_code == 200, response.text

    async def test_creation_is_audited_without_the_key_or_the_secret(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        body = await created(client, world, jwt_secret=SECRET)
        (row,) = await audit_rows(database, "integration.created")
        assert row.actor_id == world.admin.id and row.target_id == str(body["id"])
        assert body["key"] not in str(row.details) and SECRET not in str(row.details)

    async def test_a_second_integration_with_the_same_name_is_refused(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        await created(client, world)
        response = await create(client, world.admin.headers, name="Open WebUI")
        assert response.status_code == 409
        assert error_fields(response.json()) == ["name"]

    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({"name": "  "}, "name"),
            ({"name": "x" * 101}, "name"),
            ({"name": "A", "preset": "chatgpt"}, "preset"),
            ({"name": "A", "user_id_header": "X User"}, "user_id_header"),
            ({"name": "A", "email_header": "X-Mail:"}, "email_header"),
            ({"name": "A", "name_header": "x" * 101}, "name_header"),
            ({"name": "A", "user_id_header": "Authorization"}, "user_id_header"),
            ({"name": "A", "jwt_secret": "short"}, "jwt_secret"),
            ({"name": "A", "jwt_secret": "s" * 501}, "jwt_secret"),
            ({"name": "A", "key": "tdi_chosen"}, "key"),
        ],
    )
    async def test_bad_input_names_the_field_and_writes_nothing(
        self,
        client: httpx.AsyncClient,
        database: Database,
        world: World,
        fields: dict[str, Any],
        field: str,
    ) -> None:
        before = await snapshot(database)
        response = await create(client, world.admin.headers, **fields)
        assert response.status_code == 422, response.text
        assert error_fields(response.json()) == [field]
        assert await snapshot(database) == before


class TestWhoMayManageIntegrations:
    @pytest.mark.parametrize("handle", ["owner", "alice"])
    async def test_team_owners_and_members_are_refused_with_403(
        self, client: httpx.AsyncClient, world: World, handle: str
    ) -> None:
        body = await created(client, world)
        headers = world.people[handle].headers
        calls = [
            client.get(f"{API}/integrations", headers=headers),
            client.post(f"{API}/integrations", headers=headers, json={"name": "Mine"}),
            client.get(f"{API}/integrations/{body['id']}", headers=headers),
            client.patch(f"{API}/integrations/{body['id']}", headers=headers, json={"name": "B"}),
            client.delete(f"{API}/integrations/{body['id']}", headers=headers),
        ]
        for call in calls:
            assert (await call).status_code == 403

    async def test_an_integration_key_opens_nothing_here(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        body = await created(client, world)
        headers = {"Authorization": f"Bearer {body['key']}"}
        assert (await client.get(f"{API}/integrations", headers=headers)).status_code == 403
        refused = await client.delete(f"{API}/integrations/{body['id']}", headers=headers)
        assert refused.status_code == 403

    async def test_an_admin_of_another_organization_sees_404(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        body = await created(client, world)
        headers = world.olga.headers
        assert (await client.get(f"{API}/integrations", headers=headers)).json() == []
        path = f"{API}/integrations/{body['id']}"
        assert (await client.get(path, headers=headers)).status_code == 404
        assert (await client.patch(path, headers=headers, json={"name": "B"})).status_code == 404
        assert (await client.delete(path, headers=headers)).status_code == 404

    async def test_a_super_admin_manages_those_of_the_organization_they_act_in(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        headers = acting_in(world.root, world.org_id)
        response = await create(client, headers, name="LibreChat", preset="librechat")
        assert response.status_code == 201
        listed = await client.get(f"{API}/integrations", headers=world.admin.headers)
        assert [row["name"] for row in listed.json()] == ["LibreChat"]
        revoked = await client.delete(
            f"{API}/integrations/{response.json()['id']}", headers=headers
        )
        assert revoked.status_code == 204


class TestUpdateIntegration:
    async def test_a_rename_and_new_headers_are_returned_and_audited(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        body = await created(client, world, preset="generic")
        response = await client.patch(
            f"{API}/integrations/{body['id']}",
            headers=world.admin.headers,
            json={"name": "Corp chat", "email_header": "X-Corp-Email"},
        )
        assert response.status_code == 200, response.text
        assert (response.json()["name"], response.json()["email_header"]) == (
            "Corp chat",
            "X-Corp-Email",
        )
        (row,) = await audit_rows(database, "integration.updated")
        assert row.details["before"] == {"name": "Open WebUI", "email_header": None}
        assert row.details["after"] == {"name": "Corp chat", "email_header": "X-Corp-Email"}

    async def test_a_changed_header_counts_from_the_next_call(
        self, client: httpx.AsyncClient, world: World, bus: InProcessBus
    ) -> None:
        body = await created(client, world, preset="generic")
        first = await chat(client, body["key"], **{"X-Tokendesk-User-Email": world.bob.email})
        assert first.status_code == 200, first.text  # the integration is now cached
        async with credentials_heard(bus):  # the invalidation event is delivered after commit
            await client.patch(
                f"{API}/integrations/{body['id']}",
                headers=world.admin.headers,
                json={"email_header": "X-Corp-Email"},
            )
        moved = await chat(client, body["key"], **{"X-Corp-Email": world.bob.email})
        assert moved.status_code == 200, moved.text

    async def test_a_new_secret_is_audited_as_changed_never_by_value(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        body = await created(client, world, preset="open-webui")
        path = f"{API}/integrations/{body['id']}"
        set_ = await client.patch(path, headers=world.admin.headers, json={"jwt_secret": SECRET})
        assert set_.json()["jwt_secret_set"] is True
        removed = await client.patch(path, headers=world.admin.headers, json={"jwt_secret": None})
        assert removed.json()["jwt_secret_set"] is False
        rows = await audit_rows(database, "integration.updated")
        assert [row.details["jwt_secret"] for row in rows] == ["set", "removed"]
        assert all(SECRET not in str(row.details) for row in rows)

    async def test_a_secret_set_refuses_plain_headers_from_the_next_call(
        self, client: httpx.AsyncClient, world: World, bus: InProcessBus
    ) -> None:
        body = await created(client, world, preset="open-webui")
        named = {"X-OpenWebUI-User-Id": "u-2", "X-OpenWebUI-User-Email": world.amy.email}
        assert (await chat(client, body["key"], **named)).status_code == 200
        async with credentials_heard(bus):
            await client.patch(
                f"{API}/integrations/{body['id']}",
                headers=world.admin.headers,
                json={"jwt_secret": SECRET},
            )
        assert (await chat(client, body["key"], **named)).status_code == 400

    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({"name": None}, "name"),
            ({"name": ""}, "name"),
            ({"user_id_header": "X(User)"}, "user_id_header"),
            ({"jwt_secret": "s" * 15}, "jwt_secret"),
            ({"preset": "librechat"}, "preset"),
        ],
    )
    async def test_bad_input_names_the_field_and_changes_nothing(
        self,
        client: httpx.AsyncClient,
        database: Database,
        world: World,
        fields: dict[str, Any],
        field: str,
    ) -> None:
        body = await created(client, world)
        before = await snapshot(database)
        response = await client.patch(
            f"{API}/integrations/{body['id']}", headers=world.admin.headers, json=fields
        )
        assert response.status_code == 422, response.text
        assert error_fields(response.json()) == [field]
        assert await snapshot(database) == before

    async def test_the_name_of_another_integration_is_refused(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        await created(client, world)
        other = await created(client, world, name="LibreChat")
        response = await client.patch(
            f"{API}/integrations/{other['id']}",
            headers=world.admin.headers,
            json={"name": "Open WebUI"},
        )
        assert response.status_code == 409
        assert error_fields(response.json()) == ["name"]

    async def test_a_revoked_integration_is_not_edited(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        body = await created(client, world)
        path = f"{API}/integrations/{body['id']}"
        await client.delete(path, headers=world.admin.headers)
        response = await client.patch(path, headers=world.admin.headers, json={"name": "Back"})
        assert response.status_code == 409


class TestRevokeIntegration:
    async def test_the_key_is_refused_from_the_next_call_on(
        self, client: httpx.AsyncClient, database: Database, world: World, bus: InProcessBus
    ) -> None:
        body = await created(client, world, preset="generic")
        named = {"X-Tokendesk-User-Email": world.alice.email}
        assert (await chat(client, body["key"], **named)).status_code == 200  # now cached
        async with credentials_heard(bus):
            response = await client.delete(
                f"{API}/integrations/{body['id']}", headers=world.admin.headers
            )
        assert response.status_code == 204
        assert (await chat(client, body["key"], **named)).status_code == 401
        (row,) = await audit_rows(database, "integration.revoked")
        assert row.actor_id == world.admin.id and body["key"] not in str(row.details)
        listed = await client.get(f"{API}/integrations/{body['id']}", headers=world.admin.headers)
        assert listed.json()["revoked_at"] is not None

    async def test_revoking_twice_is_a_conflict(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        body = await created(client, world)
        path = f"{API}/integrations/{body['id']}"
        assert (await client.delete(path, headers=world.admin.headers)).status_code == 204
        assert (await client.delete(path, headers=world.admin.headers)).status_code == 409

    async def test_an_unknown_integration_is_404(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        for path_id in ("999", "0", str(2**63)):
            path = f"{API}/integrations/{path_id}"
            assert (await client.delete(path, headers=world.admin.headers)).status_code == 404


class TestProvisioningSettings:
    async def test_the_defaults_provision_anyone_into_no_team(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        body = (await client.get(f"{API}/organization", headers=world.admin.headers)).json()
        assert (body["provision_users"], body["provision_domains"], body["provision_team_id"]) == (
            True,
            [],
            None,
        )

    async def test_settings_are_saved_normalized_and_audited(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        response = await client.patch(
            f"{API}/organization",
            headers=world.admin.headers,
            json={
                "provision_users": False,
                "provision_domains": [" Corp.Example ", "@acme.internal", "corp.example", "corp"],
                "provision_team_id": world.team_b,
            },
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["provision_users"] is False
        assert body["provision_domains"] == ["corp.example", "acme.internal", "corp"]
        assert body["provision_team_id"] == world.team_b
        (row,) = await audit_rows(database, "organization.updated")
        assert row.details["after"]["provision_domains"] == body["provision_domains"]
        assert row.details["before"]["provision_domains"] == []

    async def test_an_empty_list_or_null_clears_domains_and_team(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        await client.patch(
            f"{API}/organization",
            headers=world.admin.headers,
            json={"provision_domains": ["corp.example"], "provision_team_id": world.team_a},
        )
        response = await client.patch(
            f"{API}/organization",
            headers=world.admin.headers,
            json={"provision_domains": [], "provision_team_id": None},
        )
        assert (response.json()["provision_domains"], response.json()["provision_team_id"]) == (
            [],
            None,
        )

    async def test_deleting_the_team_they_join_clears_the_setting(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        await client.patch(
            f"{API}/organization",
            headers=world.admin.headers,
            json={"provision_team_id": world.team_b},
        )
        deleted = await client.delete(f"{API}/teams/{world.team_b}", headers=world.admin.headers)
        assert deleted.status_code == 204
        body = (await client.get(f"{API}/organization", headers=world.admin.headers)).json()
        assert body["provision_team_id"] is None
        (row,) = await audit_rows(database, "team.deleted")
        assert row.details["provision_team_cleared"] is True

    async def test_a_domain_list_limits_who_the_gateway_provisions(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        await client.patch(
            f"{API}/organization",
            headers=world.admin.headers,
            json={"provision_domains": ["corp.example"], "provision_team_id": world.team_a},
        )
        key = (await created(client, world, preset="generic"))["key"]
        outside = await chat(client, key, **{"X-Tokendesk-User-Email": "eve@elsewhere.example"})
        assert outside.status_code == 403
        inside = await chat(client, key, **{"X-Tokendesk-User-Email": "ann@corp.example"})
        assert inside.status_code == 200, inside.text
        users = await client.get(
            f"{API}/users", headers=world.admin.headers, params={"q": "ann@corp"}
        )
        (ann,) = users.json()["items"]
        assert ann["team"]["id"] == world.team_a

    async def test_a_team_of_another_organization_is_refused_by_name(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        async with database.transaction() as s:
            from tokendesk.accounts.teams import create_team

            elsewhere = (await create_team(s, organization_id=world.other_org_id, name="X")).id
        before = await snapshot(database)
        for team_id in (elsewhere, 999_999):
            response = await client.patch(
                f"{API}/organization",
                headers=world.admin.headers,
                json={"provision_team_id": team_id, "provision_users": False},
            )
            assert response.status_code == 422, response.text
            assert error_fields(response.json()) == ["provision_team_id"]
        assert await snapshot(database) == before

    @pytest.mark.parametrize(
        "fields",
        [
            {"provision_domains": ["not a domain"]},
            {"provision_domains": ["-corp.example"]},
            {"provision_domains": ["corp..example"]},
            {"provision_domains": ["ann@corp.example"]},
            {"provision_domains": ["bücher.example"]},
            {"provision_domains": ["x" * 64 + ".example"]},
            {"provision_domains": [f"d{i}.example" for i in range(101)]},
            {"provision_domains": [f"{'d' * 60}{i}.example" for i in range(40)]},
            {"provision_domains": "corp.example"},
            {"provision_users": None},
            {"provision_users": "yes"},
            {"provision_team_id": 0},
        ],
    )
    async def test_bad_settings_name_the_field_and_change_nothing(
        self,
        client: httpx.AsyncClient,
        database: Database,
        world: World,
        fields: dict[str, Any],
    ) -> None:
        before = await snapshot(database)
        response = await client.patch(
            f"{API}/organization", headers=world.admin.headers, json=fields
        )
        assert response.status_code == 422, response.text
        (field,) = fields
        assert [f.split(".")[0] for f in error_fields(response.json())] == [field]
        assert await snapshot(database) == before

    async def test_team_owners_may_not_change_them(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.patch(
            f"{API}/organization", headers=world.owner.headers, json={"provision_users": False}
        )
        assert response.status_code == 403
