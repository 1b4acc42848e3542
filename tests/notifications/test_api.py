"""The notifications REST API: channels, tests and deliveries, for org admins only."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from tests.factories import World
from tests.notifications.receivers import Receiver
from tests.notifications.support import outbox
from tests.token_requests.support import submit
from tokendesk.audit.models import AuditEntry
from tokendesk.db import Database
from tokendesk.notifications.worker import NotificationWorker

URL = "/api/v1/notifications"


async def _create(client: httpx.AsyncClient, world: World, **body: object) -> httpx.Response:
    return await client.post(f"{URL}/webhooks", json=body, headers=world.admin.headers)


class TestWebhooks:
    async def test_the_secret_is_shown_once_and_the_creation_audited_without_it(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        r = await _create(
            client,
            world,
            name="Approvers",
            url="https://hooks.slack.com/services/T/B/x",
            format="slack",
        )
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["secret"].startswith("whsec_") and len(created["secret"]) > 40
        listed = (await client.get(f"{URL}/webhooks", headers=world.admin.headers)).json()
        assert listed == [{k: v for k, v in created.items() if k != "secret"}]
        async with database.transaction(write=False) as s:
            [entry] = await s.scalars(
                select(AuditEntry).where(AuditEntry.action == "notifications.webhook_created")
            )
        assert entry.details["format"] == "slack"
        assert created["secret"] not in str(entry.details)

    @pytest.mark.parametrize(
        "url",
        [
            "ftp://example.com/hook",
            "javascript:alert(1)",
            "https://",
            "not a url",
            "https://example.com/" + "a" * 2000,
            "http://exa mple.com/",
            "https://example.com:99999/",
        ],
    )
    async def test_an_address_that_is_not_http_is_refused_naming_the_url(
        self, client: httpx.AsyncClient, database: Database, world: World, url: str
    ) -> None:
        r = await _create(client, world, name="x", url=url)
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "url"
        assert (await client.get(f"{URL}/webhooks", headers=world.admin.headers)).json() == []

    async def test_a_team_of_another_organization_is_not_found(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        other = await client.post(
            "/api/v1/teams", json={"name": "Elsewhere"}, headers=world.olga.headers
        )
        assert other.status_code == 201, other.text
        r = await _create(
            client, world, name="x", url="https://example.com/h", team_id=other.json()["id"]
        )
        assert r.status_code == 404

    async def test_members_and_team_owners_may_not_manage_webhooks(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        for person in (world.alice, world.owner):
            r = await client.post(
                f"{URL}/webhooks",
                json={"name": "x", "url": "https://example.com/h"},
                headers=person.headers,
            )
            assert r.status_code == 403
            assert (await client.get(f"{URL}/webhooks", headers=person.headers)).status_code == 403

    async def test_removing_a_webhook_drops_its_queued_deliveries(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        created = (await _create(client, world, name="x", url="https://example.com/h")).json()
        await submit(database, world.nora, amount=1_000)
        assert len(await outbox(database, channel="webhook")) == 1
        r = await client.delete(f"{URL}/webhooks/{created['id']}", headers=world.admin.headers)
        assert r.status_code == 204
        assert await outbox(database, channel="webhook") == []
        again = await client.delete(f"{URL}/webhooks/{created['id']}", headers=world.admin.headers)
        assert again.status_code == 404

    async def test_another_organizations_webhook_is_not_found(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        created = (await _create(client, world, name="x", url="https://example.com/h")).json()
        r = await client.delete(f"{URL}/webhooks/{created['id']}", headers=world.olga.headers)
        assert r.status_code == 404


class TestTestsAndDeliveries:
    async def test_a_test_reaches_the_webhook_and_a_failure_shows_its_error(
        self,
        client: httpx.AsyncClient,
        world: World,
        worker: NotificationWorker,
        receiver: Receiver,
    ) -> None:
        created = (await _create(client, world, name="ok", url=receiver.url("/ok"))).json()
        receiver.secrets["/ok"] = created["secret"]
        r = await client.post(
            f"{URL}/test",
            json={"channel": "webhook", "webhook_id": created["id"]},
            headers=world.admin.headers,
        )
        assert r.status_code == 202, r.text
        receiver.failures_left = 1
        await worker.drain()
        [post] = receiver.at("/ok")
        assert post.signed and post.headers["Tokendesk-Event"] == "test"
        page = (await client.get(f"{URL}/deliveries", headers=world.admin.headers)).json()
        [item] = page["items"]
        assert (item["status"], item["attempts"], item["last_error"]) == (
            "pending",
            1,
            "HTTP 500: receiver is down",
        )
        assert item["to"] == "webhook ok"
        everything = await client.get(f"{URL}/deliveries?view=all", headers=world.admin.headers)
        assert everything.json()["total"] == 1

    async def test_an_email_test_goes_to_the_caller(
        self, client: httpx.AsyncClient, world: World, worker: NotificationWorker, mailbox
    ) -> None:  # type: ignore[no-untyped-def]
        r = await client.post(f"{URL}/test", json={"channel": "email"}, headers=world.admin.headers)
        assert r.status_code == 202
        await worker.drain()
        assert mailbox.recipients() == ["admin@example.com"]
        assert mailbox.mails[0]["Subject"] == "tokendesk test notification"

    async def test_a_webhook_test_names_its_webhook(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        r = await client.post(
            f"{URL}/test", json={"channel": "webhook"}, headers=world.admin.headers
        )
        assert r.status_code == 422
        assert r.json()["errors"][0]["field"] == "webhook_id"

    async def test_an_unknown_view_is_refused_naming_it(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        r = await client.get(f"{URL}/deliveries?view=everything", headers=world.admin.headers)
        assert r.status_code == 422
        assert r.json()["errors"][0]["field"] == "view"


class TestSettings:
    async def test_the_defaults_then_a_change_audited(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        r = await client.get(f"{URL}/settings", headers=world.admin.headers)
        assert r.json() == {
            "email_enabled": True,
            "email_available": True,
            "usage_thresholds": [80, 100],
            "pool_threshold": 90,
            "digest_enabled": False,
            "digest_hour": 8,
        }
        r = await client.patch(
            f"{URL}/settings",
            json={"email_enabled": False, "usage_thresholds": [100, 50]},
            headers=world.admin.headers,
        )
        assert r.status_code == 200, r.text
        assert r.json()["usage_thresholds"] == [50, 100]
        assert r.json()["email_enabled"] is False
        async with database.transaction(write=False) as s:
            [entry] = await s.scalars(
                select(AuditEntry).where(AuditEntry.action == "notifications.settings_changed")
            )
        assert entry.details == {"email_enabled": False, "usage_thresholds": [50, 100]}

    @pytest.mark.parametrize(
        "body, field",
        [
            ({"usage_thresholds": [0]}, "usage_thresholds.0"),
            ({"usage_thresholds": [80, 80]}, "usage_thresholds"),
            ({"usage_thresholds": [10, 20, 30, 40, 50, 60]}, "usage_thresholds"),
            ({"pool_threshold": 101}, "pool_threshold"),
            ({"digest_hour": 24}, "digest_hour"),
            ({"digest_hour": -1}, "digest_hour"),
            ({"email_enabled": "maybe"}, "email_enabled"),
        ],
    )
    async def test_bad_settings_are_refused_naming_the_field(
        self, client: httpx.AsyncClient, world: World, body: dict[str, object], field: str
    ) -> None:
        r = await client.patch(f"{URL}/settings", json=body, headers=world.admin.headers)
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == field


class TestPreferences:
    async def test_an_approver_who_turns_new_requests_off_gets_none(
        self,
        client: httpx.AsyncClient,
        database: Database,
        world: World,
        worker: NotificationWorker,
        mailbox,  # type: ignore[no-untyped-def]
    ) -> None:
        r = await client.patch(
            f"{URL}/preferences", json={"new_requests": False}, headers=world.owner.headers
        )
        assert r.status_code == 200, r.text
        assert {p["kind"]: p["enabled"] for p in r.json()} == {
            "request.created": False,
            "request.decided": True,
            "requests.digest": True,
            "balance.threshold": True,
            "pool.threshold": True,
        }
        request = await submit(database, world.alice, amount=1_000)
        await worker.drain()
        # The team has an owner, who chose not to hear: nobody else is written to.
        assert mailbox.recipients() == []
        r = await client.post(
            f"/api/v1/token-requests/{request.id}/approve", headers=world.owner.headers
        )
        assert r.status_code == 200
        await worker.drain()
        assert mailbox.recipients() == ["alice@example.com"]

    async def test_the_decision_on_ones_own_request_cannot_be_turned_off(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        r = await client.patch(
            f"{URL}/preferences", json={"own_decisions": False}, headers=world.alice.headers
        )
        assert r.status_code == 422
        listed = (await client.get(f"{URL}/preferences", headers=world.alice.headers)).json()
        [decided] = [p for p in listed if p["kind"] == "request.decided"]
        assert decided == {
            "kind": "request.decided",
            "description": "The decision on my own request",
            "enabled": True,
            "can_turn_off": False,
        }
