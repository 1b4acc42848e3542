"""Personal request links: ``token_requests.links`` and the page they open (``/ask/{token}``).

A link works once signed for its user, and only for them; expired, altered, foreign or
a deactivated user's links are refused with a clear page and nothing written.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

import httpx
import pytest
from itsdangerous import Signer, URLSafeTimedSerializer
from sqlalchemy import select

from tests.factories import Person, World, snapshot
from tests.ledger.helpers import end_period
from tests.token_requests.support import audit_actions, decide, submit
from tokendesk.accounts.auth import session_serializer
from tokendesk.audit.models import AuditEntry
from tokendesk.config import Settings
from tokendesk.db import Database, utcnow
from tokendesk.token_requests.links import (
    LINK_SALT,
    LinkRefused,
    link_token,
    read_link,
    request_link,
)
from tokendesk.token_requests.models import RequestStatus, TokenRequest

NO_STORE = {"cache-control": "no-store", "referrer-policy": "no-referrer"}


def token_of(link: str) -> str:
    return link.rsplit("/", 1)[1]


def flipped(text: str, at: int) -> str:
    """``text`` with the character at ``at`` changed to another of the token alphabet."""
    other = "B" if text[at] != "B" else "C"
    return text[:at] + other + text[at + 1 :]


async def pending_of(database: Database, person: Person) -> TokenRequest | None:
    async with database.transaction(write=False) as s:
        return await s.scalar(
            select(TokenRequest).where(
                TokenRequest.user_id == person.id,
                TokenRequest.status == RequestStatus.PENDING.value,
            )
        )


async def deactivate(client: httpx.AsyncClient, world: World, person: Person) -> None:
    response = await client.patch(
        f"/api/v1/users/{person.id}", json={"is_active": False}, headers=world.admin.headers
    )
    assert response.status_code == 200, response.text


def assert_private(response: httpx.Response) -> None:
    for name, value in NO_STORE.items():
        assert response.headers[name] == value
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


class TestRequestLink:
    def test_without_a_public_url_the_link_is_a_path_from_the_root(
        self, settings: Settings
    ) -> None:
        link = request_link(settings, user_id=7)
        assert link.startswith("/ask/")
        assert read_link(settings, token_of(link)).user_id == 7

    def test_under_a_public_url_the_link_is_absolute(self, settings: Settings) -> None:
        public = settings.model_copy(update={"public_url": "https://tokens.example.com"})
        assert request_link(public, user_id=7).startswith("https://tokens.example.com/ask/")

    def test_the_link_is_short_enough_for_a_chat_message(self, settings: Settings) -> None:
        assert len(link_token(settings, user_id=2**40)) <= 64

    def test_the_link_lasts_the_configured_hours(self, settings: Settings) -> None:
        hours = settings.model_copy(update={"request_link_hours": 2})
        issued = utcnow().replace(microsecond=0)
        token = link_token(hours, user_id=7, now=issued)
        claim = read_link(hours, token, now=issued + timedelta(hours=2, seconds=-1))
        assert claim.expires_at == issued + timedelta(hours=2)
        with pytest.raises(LinkRefused) as refused:
            read_link(hours, token, now=issued + timedelta(hours=2))
        assert (refused.value.reason, refused.value.status_code) == ("expired", 410)

    def test_by_default_a_link_lasts_a_day(self, settings: Settings) -> None:
        issued = utcnow()
        token = link_token(settings, user_id=7, now=issued)
        read_link(settings, token, now=issued + timedelta(hours=23, minutes=59))
        with pytest.raises(LinkRefused):
            read_link(settings, token, now=issued + timedelta(hours=24, seconds=1))

    def test_every_altered_character_is_refused(self, settings: Settings) -> None:
        token = link_token(settings, user_id=12345)
        for at in range(len(token)):
            if token[at] == ".":
                continue
            with pytest.raises(LinkRefused) as refused:
                read_link(settings, flipped(token, at))
            assert refused.value.reason == "invalid"

    def test_a_last_character_changed_only_in_its_unused_bits_is_refused(
        self, settings: Settings
    ) -> None:
        # A 32-byte signature is 43 base64 characters: the last one's low two bits are
        # unused, so "A" and "B" there decode alike. The link must still be refused.
        for user_id in range(1, 60):
            token = link_token(settings, user_id=user_id)
            last = token[-1]
            alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
            twin = alphabet[alphabet.index(last) ^ 1]
            with pytest.raises(LinkRefused):
                read_link(settings, token[:-1] + twin)

    def test_a_link_for_another_user_cannot_be_made_from_a_valid_one(
        self, settings: Settings
    ) -> None:
        _, expiry, signature = link_token(settings, user_id=5).split(".")
        with pytest.raises(LinkRefused):
            read_link(settings, f"6.{expiry}.{signature}")

    def test_another_servers_link_is_refused(self, settings: Settings) -> None:
        elsewhere = settings.model_copy(update={"secret_key": "another-secret-of-enough-length"})
        with pytest.raises(LinkRefused):
            read_link(settings, link_token(elsewhere, user_id=5))

    def test_nothing_else_the_app_signs_passes_for_a_link(self, settings: Settings) -> None:
        payload = link_token(settings, user_id=5).rsplit(".", 1)[0]
        forged = [
            # A session cookie is signed with the same secret, under another salt.
            session_serializer(settings).dumps({"uid": 5, "sid": "x"}),
            Signer(settings.secret_key, salt="tokendesk-session").sign(payload).decode(),
            URLSafeTimedSerializer(settings.secret_key, salt=LINK_SALT).dumps(payload),
            # The link's salt with itsdangerous's default digest is not a link either.
            Signer(settings.secret_key, salt=LINK_SALT).sign(payload).decode(),
        ]
        for token in forged:
            with pytest.raises(LinkRefused):
                read_link(settings, token)

    @pytest.mark.parametrize(
        "token",
        ["", ".", "..", "x" * 10_000, "٣.AAAA.sig", "5", "5.", "0.AAAA.x", "-1.AAAA.x"],
    )
    def test_hostile_tokens_are_refused_as_invalid(self, settings: Settings, token: str) -> None:
        with pytest.raises(LinkRefused) as refused:
            read_link(settings, token)
        assert refused.value.status_code == 404

    def test_a_signed_payload_that_is_not_a_user_and_expiry_is_refused(
        self, settings: Settings
    ) -> None:
        signer = Signer(settings.secret_key, salt=LINK_SALT, digest_method=hashlib.sha256)
        for payload in ("٣.AAAAAA", "5.!!", "5.", "5.AAAAAAAAAAAAAAAA", "abc"):
            with pytest.raises(LinkRefused):
                read_link(settings, signer.sign(payload).decode())


class TestRequestPage:
    async def test_the_link_opens_that_persons_balance_and_next_reset(
        self, client: httpx.AsyncClient, settings: Settings, world: World
    ) -> None:
        response = await client.get(request_link(settings, user_id=world.alice.id))
        assert response.status_code == 200
        assert_private(response)
        assert "Alice" in response.text and "50,000" in response.text
        assert 'id="ind-reset"' in response.text
        assert "Ask for more tokens" in response.text

    async def test_an_ended_period_reads_as_its_reset_leaves_it_and_nothing_is_written(
        self, client: httpx.AsyncClient, database: Database, settings: Settings, world: World
    ) -> None:
        await end_period(database, world.bob.id, used=99_000)
        before = await snapshot(database)
        link = request_link(settings, user_id=world.bob.id)
        page = await client.get(link)
        assert page.status_code == 200
        # bob's period ended nearly spent: the page shows the fresh one.
        assert '<strong id="ind-remaining">100,000</strong>' in page.text
        assert await snapshot(database) == before

    async def test_a_pending_request_shows_with_its_cancel_button(
        self, client: httpx.AsyncClient, database: Database, settings: Settings, world: World
    ) -> None:
        pending = await submit(database, world.alice, amount=7_000)
        page = await client.get(request_link(settings, user_id=world.alice.id))
        assert "7,000" in page.text
        assert f'name="request_id" id="cancel-id" value="{pending.id}"' in page.text

    async def test_an_expired_link_shows_a_clear_page(
        self, client: httpx.AsyncClient, settings: Settings, world: World
    ) -> None:
        old = utcnow() - timedelta(hours=settings.request_link_hours, seconds=1)
        response = await client.get(request_link(settings, user_id=world.alice.id, now=old))
        assert response.status_code == 410
        assert_private(response)
        assert "This link has expired" in response.text and "Alice" not in response.text

    async def test_an_altered_link_shows_a_clear_page(
        self, client: httpx.AsyncClient, settings: Settings, world: World
    ) -> None:
        link = request_link(settings, user_id=world.alice.id)
        response = await client.get(flipped(link, len(link) - 3))
        assert response.status_code == 404
        assert "This link is not valid" in response.text and "Alice" not in response.text

    async def test_a_deactivated_users_link_stops_working(
        self, client: httpx.AsyncClient, settings: Settings, world: World
    ) -> None:
        link = request_link(settings, user_id=world.bob.id)
        assert (await client.get(link)).status_code == 200
        await deactivate(client, world, world.bob)
        response = await client.get(link)
        assert response.status_code == 403
        assert "deactivated" in response.text

    async def test_the_link_grants_nothing_else(
        self, client: httpx.AsyncClient, settings: Settings, world: World
    ) -> None:
        token = token_of(request_link(settings, user_id=world.admin.id))
        for path in ("/api/v1/me", "/events", "/admin/requests", "/chat"):
            for headers in ({"Authorization": f"Bearer {token}"}, {"Cookie": f"x={token}"}):
                response = await client.get(path, headers=headers, follow_redirects=False)
                assert response.status_code in (303, 401), (path, response.status_code)
        completion = await client.post(
            "/v1/chat/completions",
            json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert completion.status_code == 401


def form(person: Person, **fields: str) -> dict[str, str]:
    return {"user_id": str(person.id), **fields}


class TestSubmitThroughTheLink:
    async def test_a_request_sent_from_the_page_is_pending_and_audited_as_the_user(
        self, client: httpx.AsyncClient, database: Database, settings: Settings, world: World
    ) -> None:
        link = request_link(settings, user_id=world.alice.id)
        response = await client.post(
            f"{link}/request", data=form(world.alice, amount="12,000", reason="launch week")
        )
        assert response.status_code == 303
        assert response.headers["location"] == f"{link}?done=sent"
        assert_private(response)
        pending = await pending_of(database, world.alice)
        assert pending is not None
        assert (pending.amount, pending.reason) == (12_000, "launch week")
        async with database.transaction(write=False) as s:
            entry = await s.scalar(
                select(AuditEntry).where(
                    AuditEntry.target_type == "token_request",
                    AuditEntry.target_id == str(pending.id),
                )
            )
        assert entry is not None
        assert (entry.action, entry.actor_id) == ("token_request.created", world.alice.id)
        assert entry.details == {"amount": 12_000, "reason": "launch week", "via": "request_link"}
        page = await client.get(response.headers["location"])
        assert "Your request was sent" in page.text and "12,000" in page.text

    async def test_the_form_needs_no_user_id(
        self, client: httpx.AsyncClient, database: Database, settings: Settings, world: World
    ) -> None:
        link = request_link(settings, user_id=world.bob.id)
        response = await client.post(f"{link}/request", data={"amount": "900"})
        assert response.status_code == 303
        assert (await pending_of(database, world.bob)).amount == 900

    async def test_another_users_id_in_the_form_is_refused_and_nothing_written(
        self, client: httpx.AsyncClient, database: Database, settings: Settings, world: World
    ) -> None:
        link = request_link(settings, user_id=world.alice.id)
        before = await snapshot(database)
        response = await client.post(
            f"{link}/request", data=form(world.bob, amount="1000", reason="for bob")
        )
        assert response.status_code == 403
        assert_private(response)
        assert "belongs to someone else" in response.text
        assert await snapshot(database) == before

    @pytest.mark.parametrize(
        ("fields", "status", "message"),
        [
            ({"amount": "2000000"}, 422, "at most 1000000"),
            ({"amount": "0"}, 422, "greater than 0"),
            ({"amount": "-5"}, 422, "greater than 0"),
            ({"amount": "1.5"}, 422, "greater than 0"),
            ({"amount": "٣٠٠"}, 422, "greater than 0"),
            ({"amount": "9" * 5000}, 422, "greater than 0"),
            ({"amount": ""}, 422, "greater than 0"),
            ({"amount": "100", "reason": "x" * 1001}, 422, "at most 1000 characters"),
        ],
    )
    async def test_the_chat_apps_rules_refuse_a_bad_form_and_write_nothing(
        self,
        client: httpx.AsyncClient,
        database: Database,
        settings: Settings,
        world: World,
        fields: dict[str, str],
        status: int,
        message: str,
    ) -> None:
        link = request_link(settings, user_id=world.alice.id)
        before = await snapshot(database)
        response = await client.post(f"{link}/request", data=form(world.alice, **fields))
        assert response.status_code == status
        assert message in response.text
        assert 'aria-invalid="true"' in response.text
        assert await snapshot(database) == before

    async def test_a_second_pending_request_is_refused(
        self, client: httpx.AsyncClient, database: Database, settings: Settings, world: World
    ) -> None:
        first = await submit(database, world.alice, amount=3_000)
        before = await snapshot(database)
        link = request_link(settings, user_id=world.alice.id)
        response = await client.post(f"{link}/request", data=form(world.alice, amount="500"))
        assert response.status_code == 409
        assert "already have a pending token request" in response.text
        assert await snapshot(database) == before
        assert (await pending_of(database, world.alice)).id == first.id

    @pytest.mark.parametrize("kind", ["expired", "altered", "deactivated"])
    async def test_a_refused_link_cannot_submit(
        self,
        client: httpx.AsyncClient,
        database: Database,
        settings: Settings,
        world: World,
        kind: str,
    ) -> None:
        now = utcnow() - timedelta(hours=25) if kind == "expired" else None
        link = request_link(settings, user_id=world.bob.id, now=now)
        if kind == "altered":
            link = flipped(link, len(link) - 1)
        if kind == "deactivated":
            await deactivate(client, world, world.bob)
        before = await snapshot(database)
        response = await client.post(f"{link}/request", data=form(world.bob, amount="500"))
        assert response.status_code == {"expired": 410, "altered": 404, "deactivated": 403}[kind]
        assert_private(response)
        assert await snapshot(database) == before

    async def test_an_admins_link_asks_as_a_member_in_their_own_name(
        self, client: httpx.AsyncClient, database: Database, settings: Settings, world: World
    ) -> None:
        link = request_link(settings, user_id=world.admin.id)
        response = await client.post(f"{link}/request", data=form(world.admin, amount="800"))
        assert response.status_code == 303
        assert (await pending_of(database, world.admin)).amount == 800


class TestCancelThroughTheLink:
    async def test_cancel_withdraws_the_pending_request(
        self, client: httpx.AsyncClient, database: Database, settings: Settings, world: World
    ) -> None:
        pending = await submit(database, world.alice)
        link = request_link(settings, user_id=world.alice.id)
        response = await client.post(
            f"{link}/cancel", data=form(world.alice, request_id=str(pending.id))
        )
        assert response.status_code == 303
        assert response.headers["location"] == f"{link}?done=cancelled"
        assert await pending_of(database, world.alice) is None
        assert await audit_actions(database, pending.id) == [
            "token_request.created",
            "token_request.cancelled",
        ]
        async with database.transaction(write=False) as s:
            cancelled = await s.scalar(
                select(AuditEntry).where(AuditEntry.action == "token_request.cancelled")
            )
        assert cancelled is not None and cancelled.actor_id == world.alice.id
        assert cancelled.details == {"amount": 1_000, "via": "request_link"}
        page = await client.get(response.headers["location"])
        assert "Your request was cancelled" in page.text

    async def test_another_users_request_cannot_be_cancelled(
        self, client: httpx.AsyncClient, database: Database, settings: Settings, world: World
    ) -> None:
        bobs = await submit(database, world.bob)
        link = request_link(settings, user_id=world.alice.id)
        before = await snapshot(database)
        by_id = await client.post(f"{link}/cancel", data={"request_id": str(bobs.id)})
        assert by_id.status_code == 404
        by_form = await client.post(f"{link}/cancel", data=form(world.bob, request_id=str(bobs.id)))
        assert by_form.status_code == 403
        assert await snapshot(database) == before
        assert (await pending_of(database, world.bob)).id == bobs.id

    async def test_a_request_decided_meanwhile_is_reported_not_cancelled(
        self, client: httpx.AsyncClient, database: Database, settings: Settings, world: World
    ) -> None:
        pending = await submit(database, world.alice)
        await decide(database, world.admin, pending.id, "approve")
        link = request_link(settings, user_id=world.alice.id)
        response = await client.post(
            f"{link}/cancel", data=form(world.alice, request_id=str(pending.id))
        )
        assert response.status_code == 409
        assert "already approved" in response.text

    @pytest.mark.parametrize("request_id", ["", "abc", "0", "٣", "9" * 40])
    async def test_a_bad_request_id_is_refused(
        self,
        client: httpx.AsyncClient,
        database: Database,
        settings: Settings,
        world: World,
        request_id: str,
    ) -> None:
        await submit(database, world.alice)
        before = await snapshot(database)
        link = request_link(settings, user_id=world.alice.id)
        response = await client.post(f"{link}/cancel", data={"request_id": request_id})
        assert response.status_code == 422
        assert await snapshot(database) == before
