"""The outbox and its worker against a real SMTP server and webhook receiver."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from tests.factories import Person, World, add_beta_owner
from tests.notifications.receivers import Mailbox, Receiver
from tests.notifications.support import add_webhook, attempts_of, outbox
from tests.token_requests.support import actor_for, decide, submit
from tokendesk.accounts.models import User
from tokendesk.config import Settings
from tokendesk.db import Database, utcnow
from tokendesk.notifications.email import build, message_id
from tokendesk.notifications.messages import Message, idempotency_key
from tokendesk.notifications.models import Notification
from tokendesk.notifications.worker import NotificationWorker
from tokendesk.token_requests import bulk, decisions


@pytest.fixture
async def bea(database: Database, world: World) -> Person:
    return await add_beta_owner(database, world)


class TestRecipients:
    async def test_a_request_reaches_its_team_owners_and_nobody_else(
        self,
        database: Database,
        world: World,
        bea: Person,
        worker: NotificationWorker,
        mailbox: Mailbox,
    ) -> None:
        request = await submit(database, world.alice, amount=2_500, reason="quarter report")
        result = await worker.drain()
        assert (result.claimed, result.sent) == (1, 1)
        assert mailbox.recipients() == ["owner@example.com"]
        [mail] = mailbox.mails
        assert mail["Subject"] == "Alice asks for 2,500 tokens"
        text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
        assert "quarter report" in text and "quarter report" in html
        link = "https://tokens.acme.example/admin/requests?status=pending&q=alice%40example.com"
        assert link in text and link.replace("&", "&amp;") in html
        [row] = await outbox(database)
        assert (row.kind, row.token_request_id, row.status) == (
            "request.created",
            request.id,
            "sent",
        )

    async def test_a_request_of_someone_in_no_team_reaches_the_org_admins(
        self,
        database: Database,
        world: World,
        bea: Person,
        worker: NotificationWorker,
        mailbox: Mailbox,
    ) -> None:
        await submit(database, world.nora, amount=1_000)
        await worker.drain()
        # Not the other organization's admin, not a team owner.
        assert mailbox.recipients() == ["admin@example.com"]

    async def test_another_teams_owner_hears_only_of_their_own_team(
        self,
        database: Database,
        world: World,
        bea: Person,
        worker: NotificationWorker,
        mailbox: Mailbox,
    ) -> None:
        await submit(database, world.bob, amount=1_000)
        await worker.drain()
        assert mailbox.recipients() == ["bea@example.com"]

    async def test_a_team_whose_only_owner_asks_falls_back_to_the_org_admins(
        self, database: Database, world: World, worker: NotificationWorker, mailbox: Mailbox
    ) -> None:
        await submit(database, world.owner, amount=1_000)
        await worker.drain()
        assert mailbox.recipients() == ["admin@example.com"]

    async def test_a_deactivated_approver_is_not_written_to(
        self, database: Database, world: World, worker: NotificationWorker, mailbox: Mailbox
    ) -> None:
        async with database.transaction() as s:
            owner = await s.get(User, world.owner.id)
            assert owner is not None
            owner.is_active = False
        await submit(database, world.alice, amount=1_000)
        await worker.drain()
        assert mailbox.recipients() == ["admin@example.com"]

    async def test_a_decision_tells_the_requester_the_amount_and_the_note(
        self, database: Database, world: World, worker: NotificationWorker, mailbox: Mailbox
    ) -> None:
        request = await submit(database, world.alice, amount=2_000)
        await worker.drain()
        await decide(database, world.owner, request.id, "approve", amount=1_500, note="half now")
        await worker.drain()
        [mail] = mailbox.to("alice@example.com")
        assert mail["Subject"] == "Your request was approved: 1,500 tokens"
        text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert "Granted: 1,500 tokens" in text
        assert "Note: half now" in text
        assert "Decided by: Owner" in text
        assert "https://tokens.acme.example/chat" in text

    async def test_a_rejection_says_so(
        self, database: Database, world: World, worker: NotificationWorker, mailbox: Mailbox
    ) -> None:
        request = await submit(database, world.bob, amount=2_000)
        await decide(database, world.admin, request.id, "reject", note="not this month")
        await worker.drain()
        [mail] = mailbox.to("bob@example.com")
        assert mail["Subject"] == "Your request for 2,000 tokens was rejected"
        assert "not this month" in mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]

    async def test_a_cancelled_request_tells_nobody_more(
        self, database: Database, world: World, worker: NotificationWorker, mailbox: Mailbox
    ) -> None:
        request = await submit(database, world.alice, amount=2_000)
        await decide(database, world.alice, request.id, "cancel")
        await worker.drain()
        assert mailbox.recipients() == ["owner@example.com"]

    async def test_a_bulk_approval_tells_each_requester_once(
        self, database: Database, world: World, worker: NotificationWorker, mailbox: Mailbox
    ) -> None:
        ids = [
            (await submit(database, p, amount=1_000)).id
            for p in (world.alice, world.bob, world.nora)
        ]
        actor = await actor_for(database, world.admin)
        async with database.transaction() as s:
            await bulk.bulk(s, actor=actor, action="approve", ids=ids, note="all good")
        decided = await outbox(database, kind="request.decided")
        assert sorted(n.token_request_id for n in decided) == sorted(ids)
        await worker.drain()
        told = sorted(
            str(m["To"]).rpartition("<")[2].rstrip(">")
            for m in mailbox.mails
            if "approved" in str(m["Subject"])
        )
        assert told == ["alice@example.com", "bob@example.com", "nora@example.com"]


class TestSameTransaction:
    async def test_a_rolled_back_request_queues_nothing(
        self, database: Database, world: World, worker: NotificationWorker, mailbox: Mailbox
    ) -> None:
        actor = await actor_for(database, world.alice)
        with pytest.raises(RuntimeError):
            async with database.transaction() as s:
                await decisions.submit(s, actor=actor, amount=1_000)
                assert await s.scalar(select(func.count()).select_from(Notification)) == 1
                raise RuntimeError("the caller fails after the submit")
        assert await outbox(database) == []
        assert (await worker.drain()).claimed == 0
        assert mailbox.mails == []

    async def test_email_turned_off_for_the_organization_queues_no_email(
        self, database: Database, world: World, worker: NotificationWorker, receiver: Receiver
    ) -> None:
        from tokendesk.notifications import channels
        from tokendesk.notifications.schemas import NotificationSettingsIn

        actor = await actor_for(database, world.admin)
        async with database.transaction() as s:
            await channels.update_settings(
                s,
                actor=actor,
                data=NotificationSettingsIn(email_enabled=False),
                settings=Settings(),
            )
        await add_webhook(database, world.admin, receiver, "/org")
        await submit(database, world.alice, amount=1_000)
        assert [n.channel for n in await outbox(database)] == ["webhook"]


class TestWebhooks:
    async def test_each_format_is_signed_and_scoped(
        self, database: Database, world: World, worker: NotificationWorker, receiver: Receiver
    ) -> None:
        await add_webhook(database, world.admin, receiver, "/json")
        await add_webhook(database, world.admin, receiver, "/slack", format="slack")
        await add_webhook(database, world.admin, receiver, "/teams", format="teams")
        await add_webhook(database, world.admin, receiver, "/beta", team_id=world.team_b)
        request = await submit(database, world.alice, amount=3_000, reason="launch")
        await worker.drain()
        assert sorted(p.path for p in receiver.posts) == ["/json", "/slack", "/teams"]
        assert all(p.signed for p in receiver.posts)
        [generic] = receiver.at("/json")
        body = json.loads(generic.body)
        assert body["event"] == "request.created"
        assert body["request"]["id"] == request.id
        assert body["request"]["amount"] == 3_000
        assert body["request"]["requester"]["email"] == "alice@example.com"
        assert body["id"] == generic.key
        [slack] = receiver.at("/slack")
        slack_body = json.loads(slack.body)
        assert slack_body["text"] == "Alice asks for 3,000 tokens"
        assert slack_body["blocks"][1]["elements"][0]["url"].startswith(
            "https://tokens.acme.example/admin/requests"
        )
        [teams] = receiver.at("/teams")
        card = json.loads(teams.body)["attachments"][0]
        assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
        assert card["content"]["type"] == "AdaptiveCard"
        facts = {f["title"]: f["value"] for f in card["content"]["body"][-1]["facts"]}
        assert facts["Amount"] == "3,000 tokens" and facts["Reason"] == "launch"

    async def test_a_team_webhook_hears_its_teams_requests_and_decisions(
        self, database: Database, world: World, worker: NotificationWorker, receiver: Receiver
    ) -> None:
        await add_webhook(database, world.admin, receiver, "/beta", team_id=world.team_b)
        request = await submit(database, world.bob, amount=1_000)
        await decide(database, world.admin, request.id, "approve")
        await worker.drain()
        events = [json.loads(p.body)["event"] for p in receiver.at("/beta")]
        assert events == ["request.created", "request.decided"]

    async def test_a_tampered_body_fails_the_signature_check(self) -> None:
        from tokendesk.notifications import webhooks

        signature = webhooks.sign("whsec_x", 1_700_000_000, b'{"a":1}')
        assert webhooks.verify(
            "whsec_x", timestamp="1700000000", signature=signature, body=b'{"a":1}'
        )
        assert not webhooks.verify(
            "whsec_x", timestamp="1700000000", signature=signature, body=b'{"a":2}'
        )
        assert not webhooks.verify(
            "whsec_x", timestamp="1700000001", signature=signature, body=b'{"a":1}'
        )


class TestRetries:
    async def test_a_failing_receiver_is_retried_with_backoff_then_marked_failed(
        self,
        database: Database,
        world: World,
        settings: Settings,
        worker: NotificationWorker,
        receiver: Receiver,
    ) -> None:
        await add_webhook(database, world.admin, receiver, "/down")
        receiver.failures_left = 10_000
        await submit(database, world.nora, amount=1_000)
        [row] = await outbox(database, channel="webhook")
        clock = row.created_at
        delays = []
        # A day of retries: seven doublings to the hour, then hourly.
        for _ in range(60):
            tick = await worker.run_once(now=clock)
            # The webhook's post fails every time (the admin's email goes through).
            assert tick.retried + tick.failed == 1
            [row] = await outbox(database, channel="webhook")
            if row.status == "failed":
                break
            delays.append((row.next_attempt_at - clock).total_seconds())
            clock = row.next_attempt_at
        assert row.status == "failed"
        assert row.last_error == "HTTP 500: receiver is down"
        # 30 s, doubling each time, at most an hour, until a day has passed.
        assert delays[:5] == [30, 60, 120, 240, 480]
        assert max(delays) == 3600
        attempts = await attempts_of(database, row.id)
        assert len(attempts) == row.attempts == len(receiver.at("/down"))
        assert [a.outcome for a in attempts][-1] == "failed"
        assert {a.outcome for a in attempts[:-1]} == {"retry"}
        # Nothing due any more: a failed notification is not tried again.
        assert (await worker.run_once(now=clock + timedelta(days=2))).claimed == 0

    async def test_a_receiver_that_recovers_gets_it_on_the_next_attempt(
        self, database: Database, world: World, worker: NotificationWorker, receiver: Receiver
    ) -> None:
        await add_webhook(database, world.admin, receiver, "/flaky")
        receiver.failures_left = 2
        await submit(database, world.nora, amount=1_000)
        [row] = await outbox(database, channel="webhook")
        clock = row.created_at
        for _ in range(3):
            await worker.run_once(now=clock)
            [row] = await outbox(database, channel="webhook")
            clock = row.next_attempt_at
        assert (row.status, row.attempts, row.last_error) == ("sent", 3, None)
        keys = {p.key for p in receiver.at("/flaky")}
        assert len(keys) == 1

    async def test_an_unreachable_smtp_server_is_retried(
        self, database: Database, world: World, settings: Settings, mailbox: Mailbox
    ) -> None:
        closed = settings.model_copy(update={"smtp_port": 1})
        worker = NotificationWorker(closed, database)
        await submit(database, world.nora, amount=1_000)
        tick = await worker.run_once()
        assert (tick.claimed, tick.retried) == (1, 1)
        [row] = await outbox(database)
        assert row.status == "pending" and row.last_error
        await worker.close()


class TestRedelivery:
    async def test_a_worker_killed_mid_delivery_redelivers_once_with_the_same_key(
        self,
        database: Database,
        world: World,
        settings: Settings,
        receiver: Receiver,
        mailbox: Mailbox,
    ) -> None:
        await add_webhook(database, world.admin, receiver, "/hook")
        request = await submit(database, world.nora, amount=1_000)
        release = asyncio.Event()
        receiver.hold = release
        first = NotificationWorker(settings, database)
        killed = asyncio.create_task(first.run_once())
        await asyncio.wait_for(receiver.arrived.wait(), 10)
        # The post reached the receiver; the server dies before recording it.
        killed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await killed
        release.set()
        await first.close()
        [row] = await outbox(database, channel="webhook")
        assert row.status == "pending" and row.lease_until is not None
        restarted = NotificationWorker(settings, database)
        # Still leased to the dead worker: not taken before the lease runs out.
        assert (await restarted.run_once()).claimed == 0
        after_lease = row.lease_until + timedelta(seconds=1)
        tick = await restarted.drain(now=after_lease)
        # The post and the admin's email, claimed in the dead worker's batch.
        assert tick.sent == 2
        assert (await restarted.drain(now=after_lease + timedelta(hours=1))).claimed == 0
        await restarted.close()
        posts = receiver.at("/hook")
        assert len(posts) == 2
        assert posts[0].key == posts[1].key == idempotency_key(settings, row.id)
        [row] = await outbox(database, channel="webhook")
        assert (row.status, row.attempts, row.token_request_id) == ("sent", 2, request.id)
        # The email went out before the kill, or not: every copy has one Message-ID.
        assert len({m["Message-ID"] for m in mailbox.mails}) == 1

    async def test_an_email_keeps_its_message_id_when_delivered_again(
        self, database: Database, world: World, settings: Settings, mailbox: Mailbox
    ) -> None:
        await submit(database, world.nora, amount=1_000)
        [row] = await outbox(database)
        worker = NotificationWorker(settings, database)
        batch = [d for d in await _deliveries(database, [row.id])]
        await worker.deliver(batch, now=utcnow())
        await worker.deliver(batch, now=utcnow())
        await worker.close()
        first, second = mailbox.mails
        assert first["Message-ID"] == second["Message-ID"] == message_id(settings, row.id)


async def _deliveries(database: Database, ids: list[int]) -> list:  # type: ignore[type-arg]
    from tokendesk.notifications import repository

    async with database.transaction(write=False) as s:
        return await repository.deliveries(s, ids)


class TestNoSmtp:
    async def test_without_an_smtp_host_emails_are_skipped_not_retried(
        self, database: Database, world: World, db_url: str
    ) -> None:
        worker = NotificationWorker(Settings(database_url=db_url, demo=True), database)
        await submit(database, world.nora, amount=1_000)
        tick = await worker.drain()
        assert (tick.claimed, tick.skipped) == (1, 1)
        [row] = await outbox(database)
        assert row.status == "skipped"
        assert "TOKENDESK_SMTP_HOST" in (row.last_error or "")
        await worker.close()


class TestEmailShape:
    def test_names_and_subjects_beyond_ascii_arrive_as_written(self) -> None:
        settings = Settings(database_url="sqlite+aiosqlite://", smtp_from="desk@example.com")
        message = Message(
            event="request.decided",
            subject="Your request was approved — 5 000 tokens for Zoë",
            lines=["Ångström approved it."],
            facts=[("Team", "Équipe Nord")],
            link="http://desk.example.com/",
        )
        mail = build(
            settings,
            notification_id=7,
            to_email="zoe@example.com",
            to_name="Zoë Ω",
            message=message,
        )
        received = email.message_from_bytes(mail.as_bytes(), policy=email.policy.default)
        assert received["Subject"] == message.subject
        assert received["To"].addresses[0].display_name == "Zoë Ω"
        assert received["Message-ID"] == message_id(settings, 7)
        text = received.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        html = received.get_body(("html",)).get_content()  # type: ignore[union-attr]
        assert "Ångström approved it." in text and "Team: Équipe Nord" in text
        assert "<td>Équipe Nord</td>" in html
