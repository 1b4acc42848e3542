"""The Settings page's notifications: channels, tests, thresholds and the delivery view."""

from __future__ import annotations

import re
from datetime import timedelta

from tests.factories import World
from tests.notifications.support import outbox
from tests.web_admin.conftest import LoginFactory, triggers
from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.notifications.worker import NotificationWorker

SECRET = re.compile(r'id="new-webhook-secret" readonly class="mono" value="(whsec_[^"]+)"')


class TestChannels:
    async def test_an_admin_sees_the_channels_and_that_the_server_sends_no_email(
        self, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        page = (await admin.get("/admin/settings")).text
        assert 'id="notifications"' in page
        assert 'id="no-smtp"' in page and "TOKENDESK_SMTP_HOST" in page
        assert "No webhooks yet." in page

    async def test_a_team_owner_sees_no_channels_and_may_not_change_them(
        self, world: World, login: LoginFactory
    ) -> None:
        owner = await login(world.owner)
        page = (await owner.get("/admin/settings")).text
        assert 'id="notifications"' not in page
        r = await owner.post(
            "/admin/notifications/webhooks", {"name": "x", "url": "https://example.com/h"}
        )
        assert r.status_code == 403

    async def test_a_new_webhooks_secret_is_shown_once(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        r = await admin.post(
            "/admin/notifications/webhooks",
            {
                "name": "#approvals",
                "url": "https://hooks.slack.com/services/T0/B0/abc",
                "format": "slack",
                "team_id": str(world.team_a),
            },
        )
        assert r.status_code == 200, r.text
        match = SECRET.search(r.text)
        assert match, "the secret is shown"
        assert "team Alpha" in r.text and "Slack" in r.text
        assert triggers(r)["admin:toast"]
        page = (await admin.get("/admin/settings")).text
        assert "#approvals" in page
        assert match.group(1) not in page

    async def test_an_address_that_is_not_http_is_named_and_nothing_added(
        self, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        r = await admin.post(
            "/admin/notifications/webhooks", {"name": "x", "url": "file:///etc/passwd"}
        )
        assert r.status_code == 422
        assert 'id="ntf-url-error"' in r.text
        assert "No webhooks yet." in r.text

    async def test_a_test_is_queued_then_the_webhook_removed(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        await admin.post(
            "/admin/notifications/webhooks", {"name": "ops", "url": "https://example.com/hook"}
        )
        [hook_id] = re.findall(
            r'data-webhook-id="(\d+)"', (await admin.get("/admin/settings")).text
        )
        r = await admin.post(
            "/admin/notifications/test", {"channel": "webhook", "webhook_id": hook_id}
        )
        assert r.status_code == 200
        [queued] = await outbox(database)
        assert (queued.kind, queued.webhook_id) == ("test", int(hook_id))
        r = await admin.post(f"/admin/notifications/webhooks/{hook_id}/delete")
        assert r.status_code == 200 and "No webhooks yet." in r.text
        assert await outbox(database) == []

    async def test_thresholds_are_saved_and_a_bad_one_named(
        self, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        r = await admin.post(
            "/admin/notifications/settings",
            {"email_enabled": "1", "usage_thresholds": "50, 90,100", "pool_threshold": ""},
        )
        assert r.status_code == 200, r.text
        assert 'value="50, 90, 100"' in r.text
        assert re.search(r'id="ntf-pool_threshold"[^>]*value=""', r.text), r.text[-4000:]
        r = await admin.post(
            "/admin/notifications/settings",
            {"usage_thresholds": "50, lots", "pool_threshold": "95"},
        )
        assert r.status_code == 422
        assert 'id="ntf-usage_thresholds-error"' in r.text

    async def test_the_daily_digest_is_turned_on_at_an_hour_and_a_bad_hour_named(
        self, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        page = (await admin.get("/admin/settings")).text
        assert re.search(r'id="ntf-digest_enabled"[^>]*value="1" >', page), "off by default"
        form = {"email_enabled": "1", "usage_thresholds": "80, 100", "pool_threshold": "90"}
        r = await admin.post(
            "/admin/notifications/settings", {**form, "digest_enabled": "1", "digest_hour": "7"}
        )
        assert r.status_code == 200, r.text
        assert re.search(r'id="ntf-digest_enabled"[^>]*checked', r.text)
        assert re.search(r'id="ntf-digest_hour"[^>]*value="7"', r.text)
        r = await admin.post(
            "/admin/notifications/settings", {**form, "digest_enabled": "1", "digest_hour": "25"}
        )
        assert r.status_code == 422
        assert 'id="ntf-digest_hour-error"' in r.text


class TestDeliveries:
    async def test_a_given_up_delivery_shows_its_last_error(
        self, database: Database, world: World, login: LoginFactory, settings: Settings
    ) -> None:
        admin = await login(world.admin)
        # Nothing listens on port 1.
        await admin.post(
            "/admin/notifications/webhooks", {"name": "gone", "url": "http://127.0.0.1:1/hook"}
        )
        [hook_id] = re.findall(
            r'data-webhook-id="(\d+)"', (await admin.get("/admin/settings")).text
        )
        await admin.post("/admin/notifications/test", {"channel": "webhook", "webhook_id": hook_id})
        [queued] = await outbox(database)
        worker = NotificationWorker(settings, database)
        await worker.run_once(now=queued.created_at + timedelta(hours=25))
        await worker.close()
        page = (await admin.get("/admin/settings")).text
        assert "1 need attention" in page
        deliveries = (await admin.get("/admin/settings/deliveries")).text
        assert f'data-notification-id="{queued.id}"' in deliveries
        assert 'pill-rejected">failed' in deliveries
        assert "ClientConnectorError" in deliveries
