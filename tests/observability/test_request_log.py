"""One log line per request, its id from X-Request-ID (bounded, sanitized) or made here
and returned, text or JSON lines that never carry a prompt."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.factories import World
from tests.gateway.conftest import Harness
from tokendesk.accounts.models import ApiKey
from tokendesk.db import Database
from tokendesk.observability import logs
from tokendesk.observability.requests import MAX_ID_LENGTH, UNMATCHED

SECRET_PROMPT = "the launch code is PROMPT-SECRET-4242"
GENERATED = re.compile(r"[0-9a-f]{12}-[0-9a-f]+")


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The tokendesk loggers' lines as JSON, into a buffer; text on stderr again after."""
    stream = io.StringIO()
    logs.configure("json", "info", stream=stream)
    try:
        yield stream
    finally:
        logs.configure("text", "info")


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def requests_of(stream: io.StringIO) -> list[dict[str, Any]]:
    return [line for line in parsed(stream) if line["logger"] == "tokendesk.request"]


async def raw_call(app: Any, headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    """``GET /healthz`` sent straight to the ASGI app, with headers no HTTP client sends."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/healthz",
        "raw_path": b"/healthz",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test"), *headers],
        "client": ("127.0.0.1", 1234),
        "server": ("test", 80),
        "state": {},
    }
    await app(scope, receive, send)
    return sent


def request_id_of(sent: list[dict[str, Any]]) -> str:
    [start] = [m for m in sent if m["type"] == "http.response.start"]
    ids = [value for name, value in start["headers"] if name == b"x-request-id"]
    assert len(ids) == 1
    value: bytes = ids[0]
    return value.decode("ascii")


def app_of(harness: Harness) -> Any:
    transport = harness.http._transport
    assert isinstance(transport, httpx.ASGITransport)
    return transport.app


@pytest.fixture
async def key_id(database: Database, world: World) -> AsyncIterator[int]:
    async with database.transaction(write=False) as s:
        found = await s.scalar(select(ApiKey.id).where(ApiKey.user_id == world.alice.id))
    assert found is not None
    yield found


class TestRequestId:
    async def test_a_plain_request_id_comes_back_and_names_the_line(
        self, harness: Harness, log_lines: io.StringIO
    ) -> None:
        r = await harness.http.get("/healthz", headers={"X-Request-ID": "req-42.a:b_C"})
        assert r.headers["x-request-id"] == "req-42.a:b_C"
        [line] = requests_of(log_lines)
        assert line["request_id"] == "req-42.a:b_C"

    async def test_without_one_each_request_gets_its_own(self, harness: Harness) -> None:
        first = (await harness.http.get("/healthz")).headers["x-request-id"]
        second = (await harness.http.get("/healthz")).headers["x-request-id"]
        assert GENERATED.fullmatch(first) and GENERATED.fullmatch(second)
        assert first != second

    @pytest.mark.parametrize(
        "hostile",
        [
            b"a" * (MAX_ID_LENGTH + 1),
            b"x" * 100_000,
            b"abc\r\nX-Injected: 1",
            b"abc\x00def",
            b"\x1b[31mred",
            "caf\u00e9-\u2603".encode(),
            b"\xff\xfe",
            b"",
            b"has space",
            b'"quoted"',
        ],
    )
    async def test_a_hostile_request_id_is_replaced_with_one_made_here(
        self, harness: Harness, log_lines: io.StringIO, hostile: bytes
    ) -> None:
        sent = await raw_call(app_of(harness), [(b"x-request-id", hostile)])
        request_id = request_id_of(sent)
        assert GENERATED.fullmatch(request_id)
        [line] = requests_of(log_lines)
        assert line["request_id"] == request_id
        assert hostile.decode("latin-1") not in log_lines.getvalue() or hostile == b""

    async def test_the_longest_plain_id_is_kept(self, harness: Harness) -> None:
        longest = "r" * MAX_ID_LENGTH
        r = await harness.http.get("/healthz", headers={"X-Request-ID": longest})
        assert r.headers["x-request-id"] == longest

    async def test_the_id_is_added_to_a_refusal_before_any_route_too(
        self, harness: Harness
    ) -> None:
        huge = b"x" * (harness.gateway.settings.gateway_body_max_bytes + 1)
        r = await harness.http.post(
            "/v1/chat/completions", content=huge, headers={"X-Request-ID": "big-body"}
        )
        assert r.status_code == 413
        assert r.headers["x-request-id"] == "big-body"


class TestRequestLine:
    async def test_a_gateway_call_logs_one_json_line_without_the_prompt(
        self, harness: Harness, world: World, log_lines: io.StringIO, key_id: int
    ) -> None:
        body = {"model": "fast", "messages": [{"role": "user", "content": SECRET_PROMPT}]}
        r = await harness.http.post(
            "/v1/chat/completions",
            json=body,
            headers={**world.alice.headers, "X-Request-ID": "call-1"},
        )
        assert r.status_code == 200
        r = await harness.http.post(
            "/v1/chat/completions",
            json={**body, "stream": True},
            headers={**world.alice.headers, "X-Request-ID": "call-2"},
        )
        assert r.status_code == 200
        await harness.settled()
        lines = requests_of(log_lines)
        assert [line["request_id"] for line in lines] == ["call-1", "call-2"]
        for line in lines:
            assert line["method"] == "POST"
            assert line["route"] == "/v1/chat/completions"  # served by the shortcut
            assert line["status"] == 200
            assert line["user_id"] == world.alice.id
            assert line["key_id"] == key_id
            assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
            assert line["level"] == "info"
        assert "PROMPT-SECRET" not in log_lines.getvalue()
        assert world.alice.key not in log_lines.getvalue()

    async def test_a_routed_request_logs_its_template_not_its_path(
        self, harness: Harness, world: World, log_lines: io.StringIO
    ) -> None:
        r = await harness.http.get(f"/api/v1/users/{world.bob.id}", headers=world.admin.headers)
        assert r.status_code == 200, r.text
        r = await harness.http.get("/ask/some-personal-link-token-value")
        r = await harness.http.get("/no/such/page/secret-in-path")
        assert r.status_code == 404
        lines = requests_of(log_lines)
        assert lines[0]["route"] == "/api/v1/users/{user_id}"
        assert lines[0]["user_id"] == world.admin.id
        assert lines[0]["key_id"] is None
        assert lines[1]["route"] == "/ask/{token}"
        assert lines[2]["route"] == UNMATCHED
        assert lines[2]["status"] == 404
        text = log_lines.getvalue()
        assert "some-personal-link-token-value" not in text and "secret-in-path" not in text

    async def test_lines_written_during_a_request_carry_its_id(
        self, harness: Harness, world: World, log_lines: io.StringIO
    ) -> None:
        # The upstream's usage cannot be believed: the gateway warns, inside the request.
        harness.upstream.usage = {"prompt_tokens": -1, "completion_tokens": 1}
        r = await harness.http.post(
            "/v1/chat/completions",
            json={"model": "fast", "messages": [{"role": "user", "content": SECRET_PROMPT}]},
            headers={**world.alice.headers, "X-Request-ID": "warned-1"},
        )
        assert r.status_code == 200
        warnings = [line for line in parsed(log_lines) if line["level"] == "warning"]
        assert warnings and all(line["request_id"] == "warned-1" for line in warnings)
        assert "PROMPT-SECRET" not in log_lines.getvalue()

    async def test_above_info_no_request_line_is_written(
        self, harness: Harness, log_lines: io.StringIO
    ) -> None:
        logs.configure("json", "warning", stream=log_lines)
        await harness.http.get("/healthz")
        assert requests_of(log_lines) == []

    async def test_the_text_format_reads_as_one_line(self, harness: Harness) -> None:
        stream = io.StringIO()
        logs.configure("text", "info", stream=stream)
        try:
            await harness.http.get("/healthz", headers={"X-Request-ID": "t-1"})
        finally:
            logs.configure("text", "info")
        [line] = stream.getvalue().splitlines()
        assert re.fullmatch(
            r"\S+ \S+ INFO tokendesk\.request \[t-1\] GET /healthz 200 \d+\.\d\dms user=- key=-",
            line,
        ), line

    def test_an_exception_is_one_json_line_with_its_traceback(self, log_lines: io.StringIO) -> None:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("tokendesk.test").exception("it failed")
        [line] = parsed(log_lines)
        assert line["message"] == "it failed"
        assert "RuntimeError: boom" in line["exception"]


class TestOtherHandlers:
    async def test_a_handler_of_the_operators_own_gets_a_record_with_the_fields(
        self, harness: Harness, log_lines: io.StringIO
    ) -> None:
        records: list[logging.LogRecord] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(record)

        logger = logging.getLogger("tokendesk.request")
        keep = Keep()
        logger.addHandler(keep)
        try:
            await harness.http.get("/healthz", headers={"X-Request-ID": "own-1"})
        finally:
            logger.removeHandler(keep)
        [record] = records
        assert record.getMessage().startswith("GET /healthz 200 ")
        assert record.request_id == "own-1"  # type: ignore[attr-defined]
        assert record.http["route"] == "/healthz"  # type: ignore[attr-defined]
        # The record also reached tokendesk's own handler, formatted as its own lines are.
        [line] = requests_of(log_lines)
        assert (line["request_id"], line["route"], line["status"]) == ("own-1", "/healthz", 200)
