"""A database out of reach: what counts as an outage, and the 503 every request that
meets one answers, with ``Retry-After``, in the shape its API's clients read."""

from __future__ import annotations

import errno

import asyncpg
import httpx
import pytest
from sqlalchemy import exc as sa_exc
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tokendesk.db import is_outage
from tokendesk.db.outage import RETRY_AFTER_SECONDS
from tokendesk.gateway.dialects import outage_reply
from tokendesk.unavailable import DatabaseUnavailable


def _wrapped(inner: BaseException) -> BaseException:
    """``inner`` as SQLAlchemy raises what the driver raised."""
    try:
        try:
            raise inner
        except BaseException as cause:
            raise sa_exc.DBAPIError("SELECT 1", None, cause) from cause  # type: ignore[arg-type]
    except BaseException as wrapped:
        return wrapped


class TestIsOutage:
    @pytest.mark.parametrize(
        "error",
        [
            ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
            ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
            OSError(errno.EHOSTUNREACH, "No route to host"),
            asyncpg.CannotConnectNowError("the database system is starting up"),
            asyncpg.AdminShutdownError("terminating connection due to administrator command"),
            asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
            asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed"),
            sa_exc.TimeoutError("QueuePool limit of size 10 overflow 20 reached"),
            asyncpg.InternalClientError(
                "cannot switch to state 15; another operation (2) is in progress"
            ),
        ],
    )
    def test_a_database_out_of_reach_is_an_outage_raw_or_wrapped(
        self, error: BaseException
    ) -> None:
        assert is_outage(error)
        assert is_outage(_wrapped(error))

    def test_a_connection_the_pool_found_invalidated_is_an_outage(self) -> None:
        error = sa_exc.DBAPIError("SELECT 1", None, Exception("gone"), connection_invalidated=True)  # type: ignore[arg-type]
        assert is_outage(error)

    @pytest.mark.parametrize(
        "error",
        [
            asyncpg.UniqueViolationError("duplicate key value"),
            asyncpg.LockNotAvailableError("could not obtain lock"),
            ValueError("a bug"),
            OSError(errno.ENOSPC, "No space left on device"),
            # Not raised in the database driver: an upstream's, or a client's, timeout.
            TimeoutError(),
        ],
    )
    def test_anything_else_is_not(self, error: BaseException) -> None:
        assert not is_outage(error)
        assert not is_outage(_wrapped(error))


async def _refused(request: Request) -> Response:
    raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")


async def _broken(request: Request) -> Response:
    raise ValueError("a bug")


async def _cut(request: Request) -> Response:
    async def body():  # type: ignore[no-untyped-def]
        yield b"first"
        raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")

    return StreamingResponse(body())


@pytest.fixture
def http() -> httpx.AsyncClient:
    paths = ["/api/v1/me", "/v1/chat/completions", "/v1/messages", "/admin"]
    # Inside the framework's last-resort 500, as in the application.
    app = Starlette(
        routes=[Route(path, _refused, methods=["GET", "POST"]) for path in paths]
        + [Route("/broken", _broken), Route("/cut", _cut)],
        middleware=[Middleware(DatabaseUnavailable, shape=outage_reply)],
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    return httpx.AsyncClient(transport=transport, base_url="http://tokendesk")


class TestDatabaseUnavailable:
    async def test_the_api_answers_503_with_a_retry_hint(self, http: httpx.AsyncClient) -> None:
        r = await http.get("/api/v1/me")
        assert r.status_code == 503
        assert r.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
        assert r.json() == {"detail": "the database is unavailable; try again shortly"}

    async def test_the_gateway_answers_in_openais_shape(self, http: httpx.AsyncClient) -> None:
        r = await http.post("/v1/chat/completions", json={})
        assert (r.status_code, r.headers["retry-after"]) == (503, str(RETRY_AFTER_SECONDS))
        error = r.json()["error"]
        assert (error["type"], error["code"]) == ("server_error", "database_unavailable")

    async def test_anthropics_api_answers_in_its_shape(self, http: httpx.AsyncClient) -> None:
        r = await http.post("/v1/messages", json={})
        assert r.status_code == 503
        assert r.json()["type"] == "error"
        assert r.json()["error"]["type"] == "overloaded_error"

    async def test_a_page_answers_in_words(self, http: httpx.AsyncClient) -> None:
        r = await http.get("/admin", headers={"Accept": "text/html"})
        assert r.status_code == 503 and "cannot reach its database" in r.text
        assert r.headers["retry-after"] == str(RETRY_AFTER_SECONDS)

    async def test_another_error_stays_what_it_is(self, http: httpx.AsyncClient) -> None:
        with pytest.raises(ValueError, match="a bug"):
            await http.get("/broken")

    async def test_a_response_already_started_is_not_answered_again(
        self, http: httpx.AsyncClient
    ) -> None:
        with pytest.raises(ConnectionResetError):
            await http.get("/cut")
