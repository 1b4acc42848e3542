"""Signing in: the form's CSRF token, the limiter, and what a wrong guess costs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from tests.accounts.support import LOGIN_TOKEN, PASSWORD, open_sessions, sign_in
from tests.factories import World
from tests.hashing import CheapHasher, use_hasher
from tests.serving import serving
from tokendesk.accounts.schemas import MAX_PASSWORD
from tokendesk.app import create_app
from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.web.ratelimit import LoginLimiter

Browser = Callable[[str], httpx.AsyncClient]


@pytest.fixture
async def from_address(database: Database, settings: Settings) -> AsyncIterator[Browser]:
    """Browsers on one app, each from the client address it is given."""
    app = create_app(settings, database=database)
    opened: list[httpx.AsyncClient] = []

    def browser(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(address, 50_000))
        http = httpx.AsyncClient(transport=transport, base_url="http://test")
        opened.append(http)
        return http

    async with serving(app) as runtime:
        # Time stands still: a slow machine neither earns sign-ins back nor outwaits a delay.
        runtime.login_limiter = LoginLimiter(clock=lambda: 0.0)
        yield browser
        for http in opened:
            await http.aclose()


class TestLoginForm:
    async def test_a_sign_in_without_the_forms_token_is_refused(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        response = await client.post(
            "/login", data={"email": world.alice.email, "password": PASSWORD}
        )
        assert response.status_code == 403
        assert "expired" in response.text
        assert await open_sessions(database, world.alice.id) == 0

    async def test_a_token_from_another_browser_is_refused(
        self, client: httpx.AsyncClient, database: Database, world: World
    ) -> None:
        form = await client.get("/login")
        token = LOGIN_TOKEN.search(form.text)
        assert token is not None
        async with httpx.AsyncClient(transport=client._transport, base_url="http://test") as other:
            await other.get("/login")
            response = await other.post(
                "/login",
                data={"email": world.alice.email, "password": PASSWORD, "login_token": token[1]},
            )
        assert response.status_code == 403
        assert await open_sessions(database, world.alice.id) == 0

    async def test_an_email_over_254_characters_is_refused(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await sign_in(client, "a" * 250 + "@example.com", PASSWORD)
        assert response.status_code == 422
        assert "254 characters" in response.text


class TestLimiter:
    async def test_wrong_passwords_elsewhere_do_not_lock_the_owner_out(
        self, from_address: Browser, world: World
    ) -> None:
        stranger = from_address("203.0.113.9")
        for _ in range(10):
            response = await sign_in(stranger, world.alice.email, "guess")
            assert response.status_code in (401, 429)
        assert response.status_code == 429
        alice = from_address("198.51.100.4")
        assert (await sign_in(alice, world.alice.email, PASSWORD)).status_code == 303

    async def test_repeated_failures_make_the_next_try_wait(
        self, from_address: Browser, world: World
    ) -> None:
        guesser = from_address("203.0.113.9")
        answers = [(await sign_in(guesser, world.alice.email, "guess")) for _ in range(4)]
        assert [a.status_code for a in answers] == [401, 401, 401, 429]
        assert int(answers[-1].headers["Retry-After"]) >= 1
        assert "Too many attempts" in answers[-1].text
        # The right password waits too: the pair, not only wrong guesses, is held back.
        assert (await sign_in(guesser, world.alice.email, PASSWORD)).status_code == 429

    async def test_successful_sign_ins_are_limited_per_address(
        self, from_address: Browser, world: World
    ) -> None:
        office = from_address("192.0.2.1")
        codes = [
            (await sign_in(office, world.alice.email, PASSWORD)).status_code for _ in range(31)
        ]
        assert codes[:30] == [303] * 30
        assert codes[30] == 429
        # Another address is not affected.
        assert (
            await sign_in(from_address("192.0.2.2"), world.bob.email, PASSWORD)
        ).status_code == 303


class CountingHasher(CheapHasher):
    def __init__(self) -> None:
        super().__init__()
        self.verified = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verified += 1
        return super().verify(hash, password)


class TestUnknownEmail:
    async def test_an_unknown_email_costs_a_verification_like_a_wrong_password(
        self, client: httpx.AsyncClient, world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        hasher = use_hasher(monkeypatch, CountingHasher())
        wrong = await sign_in(client, world.alice.email, "guess")
        unknown = await sign_in(client, "nobody@example.com", "guess")
        assert (wrong.status_code, unknown.status_code) == (401, 401)
        assert wrong.text.count("Wrong email or password") == 1
        assert hasher.verified == 2

    async def test_a_password_longer_than_any_that_can_be_set_is_wrong_without_hashing(
        self, client: httpx.AsyncClient, world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        hasher = use_hasher(monkeypatch, CountingHasher())
        response = await sign_in(client, world.alice.email, "x" * (MAX_PASSWORD + 1))
        assert response.status_code == 401
        assert "Wrong email or password" in response.text
        assert hasher.verified == 0


class TestLimiterMemory:
    def test_a_flood_of_distinct_keys_stays_within_the_cap(self) -> None:
        limiter = LoginLimiter(max_keys=100)
        for n in range(5_000):
            limiter.attempt(f"user{n}@example.com", f"10.0.{n // 250}.{n % 250}")
            limiter.failed(f"user{n}@example.com", f"10.0.{n // 250}.{n % 250}")
        assert len(limiter) <= 200

    def test_the_delay_doubles_with_each_failure_up_to_the_cap(self) -> None:
        now = [0.0]
        limiter = LoginLimiter(free_failures=3, max_delay_seconds=8, clock=lambda: now[0])
        waits = []
        for _ in range(8):
            limiter.failed("alice@example.com", "203.0.113.9")
            waits.append(limiter.attempt("alice@example.com", "203.0.113.9"))
        assert waits == [0, 0, 1, 2, 4, 8, 8, 8]

    def test_failures_long_past_are_forgotten(self) -> None:
        now = [0.0]
        limiter = LoginLimiter(max_delay_seconds=60, clock=lambda: now[0])
        for _ in range(10):
            limiter.failed("alice@example.com", "203.0.113.9")
        assert limiter.attempt("alice@example.com", "203.0.113.9") > 0
        now[0] = 121.0
        assert limiter.attempt("alice@example.com", "203.0.113.9") == 0

    def test_a_success_clears_the_pair(self) -> None:
        limiter = LoginLimiter(clock=lambda: 0.0)
        for _ in range(3):
            limiter.failed("alice@example.com", "203.0.113.9")
        limiter.succeeded("alice@example.com", "203.0.113.9")
        assert limiter.attempt("alice@example.com", "203.0.113.9") == 0
