"""Password hashing runs beside the event loop, a few at a time."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from tests.accounts.support import API, PASSWORD, another_browser, page_csrf, sign_in, user_of
from tests.factories import World
from tests.hashing import CheapHasher, use_hasher
from tokendesk.accounts import security
from tokendesk.accounts.security import verify_password
from tokendesk.db import Database

HOLD_SECONDS = 10.0


class HeldHasher(CheapHasher):
    """Cheap argon2 whose verifications wait until the test lets them go."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.inside = 0
        self.most_inside = 0
        self.entered = threading.Semaphore(0)
        self.threads: set[int] = set()

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        with self.lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.threads.add(threading.get_ident())
        self.entered.release()
        try:
            self.release.wait(HOLD_SECONDS)
            return super().verify(hash, password)
        finally:
            with self.lock:
                self.inside -= 1


def hold(monkeypatch: pytest.MonkeyPatch) -> HeldHasher:
    """From now on, password checks wait for the test."""
    return use_hasher(monkeypatch, HeldHasher())


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> HeldHasher:
    return hold(monkeypatch)


async def _entered(hasher: HeldHasher) -> None:
    assert await asyncio.to_thread(hasher.entered.acquire, True, HOLD_SECONDS)


class TestOffTheEventLoop:
    async def test_the_server_answers_while_a_password_is_being_checked(
        self, client: httpx.AsyncClient, world: World, held: HeldHasher
    ) -> None:
        login = asyncio.create_task(sign_in(client, world.alice.email, PASSWORD))
        await _entered(held)
        # Inline, the check would hold the loop until HOLD_SECONDS ran out: nothing answers.
        health = await asyncio.wait_for(client.get("/healthz"), timeout=HOLD_SECONDS / 2)
        assert health.status_code == 200
        assert held.inside == 1, "the password check was still running"
        held.release.set()
        assert (await login).status_code == 303
        assert threading.get_ident() not in held.threads

    async def test_no_more_than_two_checks_run_at_once(
        self, client: httpx.AsyncClient, world: World, held: HeldHasher
    ) -> None:
        browsers = [another_browser(client) for _ in range(5)]
        logins = [
            asyncio.create_task(sign_in(browser, world.alice.email, PASSWORD))
            for browser in browsers
        ]
        await _entered(held)
        await _entered(held)
        # What must not happen cannot be awaited: give a third check time to start.
        await asyncio.sleep(0.3)
        assert held.inside == security.HASHING_THREADS == 2
        held.release.set()
        assert [(await login).status_code for login in logins] == [303] * 5
        assert held.most_inside == 2
        for browser in browsers:
            await browser.aclose()


class TestOutsideTheWriteTransaction:
    async def test_another_members_write_completes_while_a_password_change_is_checked(
        self,
        client: httpx.AsyncClient,
        database: Database,
        world: World,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        held, change = await _alice_changes_her_password(client, world, monkeypatch)
        assert database.write_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        rename = client.patch(
            f"{API}/users/{world.bob.id}", json={"name": "Robert"}, headers=world.bob.headers
        )
        answer = await asyncio.wait_for(rename, timeout=HOLD_SECONDS / 2)
        assert answer.status_code == 200, answer.text
        held.release.set()
        assert (await change).status_code == 200
        assert await verify_password((await user_of(database, world.alice.id)).password_hash, NEW)

    async def test_a_password_set_meanwhile_is_not_overwritten(
        self,
        client: httpx.AsyncClient,
        database: Database,
        world: World,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        held, change = await _alice_changes_her_password(client, world, monkeypatch)
        reset = client.patch(
            f"{API}/users/{world.alice.id}",
            json={"password": "set by the admin"},
            headers=world.admin.headers,
        )
        answer = await asyncio.wait_for(reset, timeout=HOLD_SECONDS / 2)
        assert answer.status_code == 200, answer.text
        held.release.set()
        refused = await change
        assert refused.status_code == 409
        assert refused.json()["errors"][0]["field"] == "current_password"
        stored = (await user_of(database, world.alice.id)).password_hash
        assert await verify_password(stored, "set by the admin")


NEW = "a new passphrase"


async def _alice_changes_her_password(
    client: httpx.AsyncClient, world: World, monkeypatch: pytest.MonkeyPatch
) -> tuple[HeldHasher, asyncio.Task[httpx.Response]]:
    """Alice signs in, then changes her password; it returns once the change is
    checking her current password, held there until the test releases it."""
    assert (await sign_in(client, world.alice.email, PASSWORD)).status_code == 303
    held = hold(monkeypatch)
    csrf = await page_csrf(client)
    change = asyncio.create_task(
        client.patch(
            f"{API}/users/{world.alice.id}",
            json={"password": NEW, "current_password": PASSWORD},
            headers={"X-CSRF-Token": csrf},
        )
    )
    await _entered(held)
    return held, change
