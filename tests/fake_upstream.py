"""A small OpenAI-compatible upstream on 127.0.0.1 for tests and benchmarks.

The requested model name picks the behaviour: ``fast`` (usage reported),
``nousage`` (no usage anywhere), ``error`` (HTTP 500), ``slow`` (answers after
``SLOW_SECONDS``), ``drop`` (streams a few chunks, then cuts the connection).
It records the Authorization header of every call so tests can check what was sent.
A test may set ``usage`` (what every reply reports as its usage, valid or not)
and ``deltas`` (the stream's deltas, and the message of a whole reply, instead of
the words of ``REPLY``), or ``raw`` (the body of a whole reply or a stream, as is),
and ``trickle`` (awaited before each chunk of a stream and each piece of a whole
reply, which then comes ``TRICKLE_BYTES`` at a time).
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

REPLY = "Hello from the fake upstream, one two three four five."
USAGE = {"prompt_tokens": 11, "completion_tokens": 13, "total_tokens": 24}
SLOW_SECONDS = 1.0
TRICKLE_BYTES = 16
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class FakeUpstream:
    def __init__(self, *, slow_seconds: float = SLOW_SECONDS, record: bool = True) -> None:
        self.slow_seconds = slow_seconds
        # What each request carried, for tests to inspect; not kept under a benchmark's
        # load, where the growing lists made the collector's full passes ever longer.
        self.record = record
        self.authorizations: list[str | None] = []
        self.bodies: list[dict[str, Any]] = []
        self.usage: Any = USAGE
        self.deltas: list[dict[str, Any]] | None = None
        self.raw: bytes | None = None
        self.trickle: Callable[[], Awaitable[None]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization")
        if self.record:
            self.authorizations.append(auth.decode() if auth else None)
        if scope["path"].endswith("/models"):
            await _json(send, 200, {"object": "list", "data": [{"id": "fast"}]})
            return
        request = json.loads(body or b"{}")
        if self.record:
            self.bodies.append(request)
        model = request.get("model", "fast")
        if model == "error":
            await _json(send, 500, {"error": {"message": "upstream exploded", "type": "server"}})
            return
        if model == "slow":
            await asyncio.sleep(self.slow_seconds)
        usage = self.usage
        deltas = self.deltas or [{"content": word + " "} for word in REPLY.split(" ")]
        if request.get("stream") and self.raw is not None:
            await _send_body(send, self.raw, content_type=b"text/event-stream")
            return
        if request.get("stream"):
            # A dropped stream breaks off after its third chunk, or before the last one of its own.
            drop_at = 2 if self.deltas is None else len(deltas) - 2
            await _stream(send, model, usage, request, deltas, drop_at, self.trickle)
            return
        if self.raw is not None:
            await _send_body(send, self.raw)
            return
        message: dict[str, Any] = {"role": "assistant", "content": REPLY}
        for delta in self.deltas or []:
            message.update(delta)
        reply: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "stop",
                }
            ],
        }
        if model != "nousage":
            reply["usage"] = usage
        payload = json.dumps(reply).encode()
        if self.trickle is None:
            await _send_body(send, payload)
            return
        await _start(send, 200, b"application/json", len(payload))
        for start in range(0, len(payload), TRICKLE_BYTES):
            await self.trickle()
            piece = payload[start : start + TRICKLE_BYTES]
            more = start + TRICKLE_BYTES < len(payload)
            await send({"type": "http.response.body", "body": piece, "more_body": more})


async def _json(send: Send, status: int, data: Any) -> None:
    await _send_body(send, json.dumps(data).encode(), status)


async def _send_body(
    send: Send, payload: bytes, status: int = 200, content_type: bytes = b"application/json"
) -> None:
    await _start(send, status, content_type, len(payload))
    await send({"type": "http.response.body", "body": payload})


async def _start(send: Send, status: int, content_type: bytes, length: int) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(length).encode()),
            ],
        }
    )


async def _stream(
    send: Send,
    model: str,
    usage: Any,
    request: dict[str, Any],
    deltas: list[dict[str, Any]],
    drop_at: int,
    trickle: Callable[[], Awaitable[None]] | None,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    for index, delta in enumerate(deltas):
        if trickle is not None:
            await trickle()
        chunk = {
            "id": "c",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
        await send(
            {
                "type": "http.response.body",
                "body": f"data: {json.dumps(chunk)}\n\n".encode(),
                "more_body": True,
            }
        )
        if model == "drop" and index == drop_at:
            raise ConnectionResetError("fake upstream drops the stream")
    wants_usage = (request.get("stream_options") or {}).get("include_usage")
    if wants_usage and model != "nousage":
        chunk = {
            "id": "c",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [],
            "usage": usage,
        }
        await send(
            {
                "type": "http.response.body",
                "body": f"data: {json.dumps(chunk)}\n\n".encode(),
                "more_body": True,
            }
        )
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RunningServer:
    """Runs an ASGI app with uvicorn inside the current event loop."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> RunningServer:
        self._task = asyncio.create_task(self.server.serve())
        for _ in range(500):
            if self.server.started:
                return self
            await asyncio.sleep(0.01)
        raise RuntimeError("server did not start")

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await asyncio.wait_for(self._task, timeout=10)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="fake OpenAI-compatible upstream")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    # As a server process should: what was imported lives for good, so keep it out of
    # the collector's generations (with the requests it kept, its full passes paused
    # this stand-in for 30-45 ms: noise in whatever is measured through it).
    gc.collect()
    gc.freeze()
    uvicorn.run(
        FakeUpstream(record=False),
        host="127.0.0.1",
        port=args.port or free_port(),
        log_level="warning",
        access_log=False,
    )
