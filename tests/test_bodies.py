"""Request bodies are received whole, bounded in size and time, before anything runs.

The live tests open raw sockets to a real server and send headers whose body
never comes: while such a request hangs, nothing (no SQLite write lock, no
PostgreSQL transaction, no pooled connection) is held for it, other members'
writes and gateway calls go through, and it is cut off after the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.accounts.support import CSRF_META, PASSWORD, sign_in
from tests.factories import World
from tests.fake_upstream import RunningServer
from tests.serving import serving
from tokendesk.accounts.auth import SESSION_COOKIE
from tokendesk.app import create_app
from tokendesk.bodies import BodyLimits, WholeBodies
from tokendesk.config import Settings
from tokendesk.db import Database

# Short, so a test waits little for the cut-off; long enough that the other calls made
# meanwhile finish well within it on a busy machine.
BODY_TIMEOUT = 3.0
# Whatever happens, no step of a test waits longer than this.
STEP_SECONDS = BODY_TIMEOUT + 10
HANG_HEADER = "x-test-hang"
# More than the PostgreSQL pool's connections (Database: 10, and 20 more on demand).
MORE_THAN_THE_POOL = 40


class BodyWatch:
    """Tells the test each time the server first asks for the body of a hanging request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.asked: asyncio.Queue[str] = asyncio.Queue()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (HANG_HEADER.encode(), b"1") not in scope["headers"]:
            await self.app(scope, receive, send)
            return
        first = True

        async def watched() -> Message:
            nonlocal first
            if first:
                first = False
                self.asked.put_nowait(scope["path"])
            return await receive()

        await self.app(scope, watched, send)


@dataclass
class Live:
    url: str
    port: int
    watch: BodyWatch
    database: Database
    sockets: list[asyncio.StreamWriter] = field(default_factory=list)

    async def owner_cookie(self, email: str) -> tuple[str, str]:
        """A signed-in session cookie and its CSRF token."""
        async with httpx.AsyncClient(base_url=self.url, timeout=STEP_SECONDS) as http:
            response = await sign_in(http, email, PASSWORD)
            assert response.status_code == 303, response.text
            page = await http.get("/login")
            match = CSRF_META.search(page.text)
            assert match
            return f"{SESSION_COOKIE}={http.cookies[SESSION_COOKIE]}", match.group(1)

    async def hang(self, method: str, path: str, headers: dict[str, str]) -> Hanging:
        """Send a request's headers announcing 100 bytes of body, and never the body."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Length: 100"]
        lines += [f"{name}: {value}" for name, value in {**headers, HANG_HEADER: "1"}.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        self.sockets.append(writer)
        return Hanging(reader, writer, asyncio.get_running_loop().time())

    def connections_in_use(self) -> int:
        engines = {self.database.write_engine, self.database.read_engine}
        return sum(engine.pool.checkedout() for engine in engines)  # type: ignore[attr-defined]

    async def holds_no_connection(self) -> bool:
        """Whether the pools are idle within a second: a request that was just answered
        (the sign-in before a hanging form) may still be handing its connection back,
        but one waiting for its body would hold a connection until the body timeout."""
        deadline = asyncio.get_running_loop().time() + 1.0
        while self.connections_in_use():
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True


@dataclass
class Hanging:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    sent_at: float

    async def answer(self) -> tuple[str, dict[str, object], float]:
        """The status line, the JSON body and how long after the headers it came.

        Read by its length, not to the end of the connection: a slow client's next byte
        may reach a server that already answered and hung up, whose reset would then
        take the unread answer with it."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), STEP_SECONDS)
        waited = asyncio.get_running_loop().time() - self.sent_at
        lines = head.decode("latin-1").split("\r\n")
        length = next(
            int(line.split(":", 1)[1])
            for line in lines
            if line.lower().startswith("content-length:")
        )
        body = await asyncio.wait_for(self.reader.readexactly(length), STEP_SECONDS)
        self.writer.close()
        return lines[0], json.loads(body), waited


@pytest.fixture
async def live(database: Database, db_url: str) -> AsyncIterator[Live]:
    app = create_app(
        Settings(
            database_url=db_url,
            demo=True,
            scheduler_enabled=False,
            body_timeout_seconds=BODY_TIMEOUT,
        ),
        database=database,
    )
    watch = BodyWatch(app)
    async with RunningServer(watch) as server:
        live = Live(server.url, server.port, watch, database)
        yield live
        # A request still hanging (a failed test) would hold up the server's shutdown.
        for writer in live.sockets:
            writer.close()


async def others_carry_on(live: Live, world: World) -> None:
    """Another member's write and a gateway call, both answered within the body timeout."""
    async with httpx.AsyncClient(base_url=live.url, timeout=STEP_SECONDS) as http:
        write, call = await asyncio.wait_for(
            asyncio.gather(
                http.post(
                    "/api/v1/token-requests",
                    json={"amount": 1_000, "reason": "more please"},
                    headers=world.bob.headers,
                ),
                http.post(
                    "/v1/chat/completions",
                    json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]},
                    headers=world.alice.headers,
                ),
            ),
            BODY_TIMEOUT,
        )
    assert write.status_code == 201, write.text
    assert call.status_code == 200, call.text


async def hang_to(live: Live, world: World, route: str) -> Hanging:
    if route == "admin form":
        cookie, _ = await live.owner_cookie(world.owner.email)
        return await live.hang(
            "POST",
            f"/admin/teams/{world.team_a}/delete",
            {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"},
        )
    if route == "api":
        return await live.hang(
            "POST",
            "/api/v1/token-requests",
            {**world.amy.headers, "Content-Type": "application/json"},
        )
    return await live.hang(
        "POST", "/v1/chat/completions", {**world.nora.headers, "Content-Type": "application/json"}
    )


async def trickled(writer: asyncio.StreamWriter, *, every: float, until: float) -> None:
    """Send one byte of the announced 100 every ``every`` seconds (a slow client) for
    ``until`` seconds, then go quiet.

    Quiet before the server hangs up: a byte that reaches a server which already
    answered and closed is answered with a reset, which may take the unread answer
    with it."""
    deadline = asyncio.get_running_loop().time() + until
    with contextlib.suppress(ConnectionError):
        while asyncio.get_running_loop().time() < deadline:
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(every)


class TestABodyThatNeverArrives:
    @pytest.mark.parametrize("route", ["admin form", "api", "gateway"])
    async def test_holds_nothing_while_others_write_and_is_cut_off(
        self, live: Live, world: World, route: str
    ) -> None:
        hanging = await hang_to(live, world, route)
        await asyncio.wait_for(live.watch.asked.get(), STEP_SECONDS)
        assert await live.holds_no_connection()
        await others_carry_on(live, world)
        status, body, waited = await hanging.answer()
        assert status == "HTTP/1.1 408 Request Timeout"
        message = body["error"]["message"] if route == "gateway" else body["detail"]  # type: ignore[index]
        assert message == f"the request body did not arrive within {BODY_TIMEOUT:g} seconds"
        assert waited >= BODY_TIMEOUT

    async def test_a_body_that_trickles_in_is_cut_off_at_the_timeout(
        self, live: Live, world: World
    ) -> None:
        hanging = await hang_to(live, world, "api")
        # A byte now and then for most of the timeout: the timeout counts from the
        # headers, not from the last byte, which would cut it off only at about
        # 1.8 timeouts.
        trickling = 0.8 * BODY_TIMEOUT
        trickle = asyncio.create_task(
            trickled(hanging.writer, every=BODY_TIMEOUT / 10, until=trickling)
        )
        status, body, waited = await hanging.answer()
        trickle.cancel()
        assert status == "HTTP/1.1 408 Request Timeout"
        assert BODY_TIMEOUT <= waited < BODY_TIMEOUT + trickling / 2
        assert body["detail"] == f"the request body did not arrive within {BODY_TIMEOUT:g} seconds"

    async def test_a_team_survives_a_delete_whose_form_never_came(
        self, live: Live, world: World
    ) -> None:
        hanging = await hang_to(live, world, "admin form")
        status, _, _ = await hanging.answer()
        assert status.startswith("HTTP/1.1 408")
        async with httpx.AsyncClient(base_url=live.url, timeout=STEP_SECONDS) as http:
            team = await http.get(f"/api/v1/teams/{world.team_a}", headers=world.admin.headers)
        assert team.status_code == 200

    async def test_more_of_them_than_pooled_connections_starve_nobody(
        self, live: Live, world: World
    ) -> None:
        cookie, _ = await live.owner_cookie(world.owner.email)
        form = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
        path = f"/admin/teams/{world.team_a}/delete"
        hangings = [await live.hang("POST", path, form) for _ in range(MORE_THAN_THE_POOL)]
        for _ in hangings:
            await asyncio.wait_for(live.watch.asked.get(), STEP_SECONDS)
        assert await live.holds_no_connection()
        await others_carry_on(live, world)
        answers = await asyncio.gather(*(hanging.answer() for hanging in hangings))
        assert {status for status, _, _ in answers} == {"HTTP/1.1 408 Request Timeout"}


@pytest.fixture
async def small_limits(database: Database, db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        database_url=db_url,
        demo=True,
        scheduler_enabled=False,
        api_body_max_bytes=2_000,
        gateway_body_max_bytes=3_000,
        form_body_max_bytes=1_024,
    )
    app = create_app(settings, database=database)
    transport = httpx.ASGITransport(app=app)
    async with (
        serving(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as http,
    ):
        yield http


def padded(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes."""
    return json.dumps({"pad": "x" * (size - 11)}).encode()


class TestATooLargeBody:
    async def test_api_body_over_its_limit_is_refused_with_413(
        self, small_limits: httpx.AsyncClient, world: World
    ) -> None:
        response = await small_limits.post(
            "/api/v1/token-requests",
            content=padded(2_001),
            headers={**world.bob.headers, "Content-Type": "application/json"},
        )
        assert response.status_code == 413
        assert response.json() == {
            "detail": "the request body is larger than the 2,000 bytes this endpoint accepts"
        }
        assert response.headers["connection"] == "close"

    async def test_api_body_at_its_limit_is_served(
        self, small_limits: httpx.AsyncClient, world: World
    ) -> None:
        response = await small_limits.post(
            "/api/v1/token-requests",
            content=padded(2_000),
            headers={**world.bob.headers, "Content-Type": "application/json"},
        )
        assert response.status_code == 422  # read and judged: "pad" is no field

    async def test_gateway_body_over_its_limit_answers_in_the_openai_shape(
        self, small_limits: httpx.AsyncClient, world: World
    ) -> None:
        response = await small_limits.post(
            "/v1/chat/completions",
            content=padded(3_001),
            headers={**world.alice.headers, "Content-Type": "application/json"},
        )
        assert response.status_code == 413
        assert response.json()["error"] == {
            "message": "the request body is larger than the 3,000 bytes this endpoint accepts",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_too_large",
        }

    async def test_form_over_its_limit_is_refused_before_anything_runs(
        self, small_limits: httpx.AsyncClient, world: World
    ) -> None:
        response = await small_limits.post(
            "/login", data={"email": world.bob.email, "password": "x" * 1_024}
        )
        assert response.status_code == 413
        assert response.json() == {
            "detail": "the request body is larger than the 1 KiB this endpoint accepts"
        }

    async def test_chunked_body_is_cut_off_once_it_passes_the_limit(
        self, small_limits: httpx.AsyncClient, world: World
    ) -> None:
        sent: list[int] = []

        async def chunks() -> AsyncIterator[bytes]:
            for index in range(100):
                sent.append(index)
                yield b"x" * 500

        response = await small_limits.post(
            "/api/v1/token-requests", content=chunks(), headers=world.bob.headers
        )
        assert response.status_code == 413
        assert len(sent) < 100


class TestBodySettings:
    @pytest.mark.parametrize(
        "field",
        ["api_body_max_bytes", "gateway_body_max_bytes", "form_body_max_bytes"],
    )
    def test_a_limit_of_nothing_is_refused(self, field: str) -> None:
        with pytest.raises(ValidationError, match=field):
            Settings(**{field: 0})  # type: ignore[arg-type]

    @pytest.mark.parametrize("value", [0, -1, float("inf")])
    def test_a_timeout_that_is_no_timeout_is_refused(self, value: float) -> None:
        with pytest.raises(ValidationError, match="body_timeout_seconds"):
            Settings(body_timeout_seconds=value)


async def no_app(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("the app never runs without its body")


def reading(timeout: float, sent: list[Message], asked: asyncio.Event) -> Coroutine[Any, Any, None]:
    """The middleware waiting for a 10-byte body from a client that sends nothing."""

    async def silence() -> Message:
        asked.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    limits = BodyLimits(api=100, gateway=100, forms=100, timeout_seconds=timeout)
    scope = {"type": "http", "path": "/api/v1/me", "headers": [(b"content-length", b"10")]}
    return WholeBodies(no_app, limits=limits)(scope, silence, send)


class TestTheReadTimeout:
    async def test_a_read_cancelled_from_outside_stays_cancelled(self) -> None:
        """Shutting down cancels a waiting read: no 408 is sent for it."""
        sent: list[Message] = []
        asked = asyncio.Event()
        task = asyncio.create_task(reading(60.0, sent, asked))
        await asyncio.wait_for(asked.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sent == []

    async def test_a_read_past_its_deadline_answers_408(self) -> None:
        sent: list[Message] = []
        await asyncio.wait_for(reading(0.1, sent, asyncio.Event()), 5)
        assert sent[0]["status"] == 408
