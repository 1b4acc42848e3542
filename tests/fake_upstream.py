"""A small OpenAI-compatible upstream on 127.0.0.1 for tests and benchmarks.

The requested model name picks the behaviour: ``fast`` (usage reported),
``nousage`` (no usage anywhere), ``error`` (HTTP 500), ``slow`` (answers after
``SLOW_SECONDS``), ``drop`` (streams a few chunks, then cuts the connection).
``/embeddings`` answers the same models alike: one small vector per input, and
``embedding_usage`` as its usage (``nousage``: none; ``error``: HTTP 500).
``/responses`` answers them in the Responses API's shapes (``responses_usage`` in
the response, streamed in ``response.completed``; ``drop`` cuts the stream after
two deltas) and ``/completions`` in the legacy API's (``usage``), both taking ``raw``.
It records the Authorization header of every call so tests can check what was sent.
``/v1/messages`` speaks Anthropic's Messages API (see :meth:`FakeUpstream.anthropic`).
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
EMBEDDING_USAGE = {"prompt_tokens": 7, "total_tokens": 7}
RESPONSES_USAGE = {
    "input_tokens": 17,
    "input_tokens_details": {"cached_tokens": 5},
    "output_tokens": 19,
    "output_tokens_details": {"reasoning_tokens": 6},
    "total_tokens": 36,
}
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
        self.embedding_usage: Any = EMBEDDING_USAGE
        self.responses_usage: Any = RESPONSES_USAGE
        self.deltas: list[dict[str, Any]] | None = None
        self.raw: bytes | None = None
        self.trickle: Callable[[], Awaitable[None]] | None = None
        self.anthropic_headers: list[dict[str, str]] = []
        self.anthropic_usage: dict[str, Any] = dict(ANTHROPIC_USAGE)
        self.anthropic_blocks: list[tuple[str, str]] = [("text", REPLY)]

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
        if "/messages" in scope["path"]:
            await self.anthropic(scope["path"], headers, body, send)
            return
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
        if scope["path"].endswith("/embeddings"):
            await _json(send, 200, _embeddings(request, self.embedding_usage))
            return
        if scope["path"].endswith("/responses"):
            await _responses(send, request, self.responses_usage, self.raw)
            return
        if scope["path"].endswith("/v1/completions"):
            await _text_completions(send, request, self.usage, self.raw)
            return
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

    # -- Anthropic's Messages API -------------------------------------------------------
    #
    # ``/v1/messages`` (and ``/v1/messages/count_tokens``, answering ``COUNTED``) insist
    # on an ``x-api-key`` and an ``anthropic-version``, as Anthropic does, and record the
    # headers that matter in ``anthropic_headers``. The model picks the behaviour as above
    # (``error``: a 529 overloaded_error; ``refuse``: a stream whose first event is an
    # error; ``drop``: a stream cut after its second delta); a reply's content is
    # ``anthropic_blocks`` ((type, text) pairs: text, thinking or tool_use, whose text is
    # the tool's input JSON), its usage ``anthropic_usage``.

    async def anthropic(
        self, path: str, headers: dict[bytes, bytes], body: bytes, send: Send
    ) -> None:
        seen = {
            name: headers[name.encode()].decode()
            for name in ("x-api-key", "authorization", "anthropic-version", "anthropic-beta")
            if name.encode() in headers
        }
        request = json.loads(body or b"{}")
        if self.record:
            self.anthropic_headers.append(seen)
            self.bodies.append(request)
        if "x-api-key" not in seen:
            await _json(send, 401, _anthropic_error("authentication_error", "x-api-key missing"))
            return
        if "anthropic-version" not in seen:
            await _json(send, 400, _anthropic_error("invalid_request_error", "no version"))
            return
        if path.endswith("/count_tokens"):
            await _json(send, 200, {"input_tokens": COUNTED})
            return
        model = request.get("model", "fast")
        if model == "error":
            await _json(send, 529, _anthropic_error("overloaded_error", "Overloaded"))
            return
        if model == "slow":
            await asyncio.sleep(self.slow_seconds)
        usage = None if model == "nousage" else self.anthropic_usage
        if not request.get("stream"):
            content = [_anthropic_block(kind, text) for kind, text in self.anthropic_blocks]
            reply = _anthropic_message(model, content, usage)
            await _json(send, 200, reply)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for event in _anthropic_events(model, self.anthropic_blocks, usage):
            if event == "drop":
                raise ConnectionResetError("fake upstream drops the stream")
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


ANTHROPIC_USAGE = {
    "input_tokens": 11,
    "output_tokens": 13,
    "cache_read_input_tokens": 0,
    "cache_creation_input_tokens": 0,
}
COUNTED = 42
_DELTAS = {"text": "text_delta", "thinking": "thinking_delta", "tool_use": "input_json_delta"}
_DELTA_FIELDS = {"text": "text", "thinking": "thinking", "tool_use": "partial_json"}


def _anthropic_error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def _anthropic_block(kind: str, text: str) -> dict[str, Any]:
    if kind == "tool_use":
        return {"type": "tool_use", "id": "toolu_1", "name": "look", "input": json.loads(text)}
    if kind == "thinking":
        return {"type": "thinking", "thinking": text, "signature": "sig"}
    return {"type": "text", "text": text}


def _anthropic_message(
    model: str, content: list[dict[str, Any]], usage: dict[str, Any] | None
) -> dict[str, Any]:
    reply: dict[str, Any] = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "end_turn",
        "stop_sequence": None,
    }
    if usage is not None:
        reply["usage"] = usage
    return reply


def _sse_event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def _anthropic_events(
    model: str, blocks: list[tuple[str, str]], usage: dict[str, Any] | None
) -> list[bytes | str]:
    """A stream as Anthropic sends it; ``"drop"`` where the connection is to be cut."""
    start = _anthropic_message(model, [], None if usage is None else {**usage, "output_tokens": 1})
    events: list[bytes | str] = [
        _sse_event("message_start", {"type": "message_start", "message": start})
    ]
    if model == "refuse":
        events.append(_sse_event("error", _anthropic_error("overloaded_error", "Overloaded")))
        return events
    deltas = 0
    for index, (kind, text) in enumerate(blocks):
        begun = _anthropic_block(kind, "{}" if kind == "tool_use" else "")
        events.append(
            _sse_event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": begun},
            )
        )
        if index == 0:
            events.append(_sse_event("ping", {"type": "ping"}))
        pieces = [text[i : i + 8] for i in range(0, len(text), 8)]
        for piece in pieces:
            delta = {"type": _DELTAS[kind], _DELTA_FIELDS[kind]: piece}
            events.append(
                _sse_event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            )
            deltas += 1
            if model == "drop" and deltas == 2:
                events.append("drop")
        events.append(
            _sse_event("content_block_stop", {"type": "content_block_stop", "index": index})
        )
    final: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
    }
    if usage is not None:
        final["usage"] = {"output_tokens": usage["output_tokens"]}
    events.append(_sse_event("message_delta", final))
    events.append(_sse_event("message_stop", {"type": "message_stop"}))
    return events


def _embeddings(request: dict[str, Any], usage: Any) -> dict[str, Any]:
    given = request.get("input")
    single = isinstance(given, str) or (
        isinstance(given, list) and bool(given) and isinstance(given[0], int)
    )
    count = 1 if single else len(given or [])
    reply: dict[str, Any] = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": [0.5, -0.25, 0.125]}
            for index in range(count)
        ],
        "model": request.get("model"),
    }
    if request.get("model") != "nousage":
        reply["usage"] = usage
    return reply


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


# -- the Responses API and the legacy Completions API ---------------------------------


async def _responses(send: Send, request: dict[str, Any], usage: Any, raw: bytes | None) -> None:
    model = request.get("model")
    words = [word + " " for word in REPLY.split(" ")]
    item = {
        "id": "msg_fake",
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": REPLY, "annotations": []}],
    }
    response: dict[str, Any] = {
        "id": "resp_fake",
        "object": "response",
        "created_at": 0,
        "status": "completed",
        "model": model,
        "output": [item],
        "usage": None if model == "nousage" else usage,
    }
    if not request.get("stream"):
        await _send_body(send, raw if raw is not None else json.dumps(response).encode())
        return
    await _start_stream(send)
    if raw is not None:
        await _more(send, raw)
    else:
        at = {"item_id": "msg_fake", "output_index": 0, "content_index": 0}
        started = {**response, "status": "in_progress", "output": [], "usage": None}
        events: list[tuple[str, dict[str, Any]]] = [
            ("response.created", {"response": started}),
            ("response.in_progress", {"response": started}),
            ("response.output_item.added", {"output_index": 0, "item": {**item, "content": []}}),
            ("response.content_part.added", {**at, "part": {"type": "output_text", "text": ""}}),
        ]
        events += [("response.output_text.delta", {**at, "delta": word}) for word in words]
        events += [
            ("response.output_text.done", {**at, "text": REPLY}),
            ("response.output_item.done", {"output_index": 0, "item": item}),
            ("response.completed", {"response": response}),
        ]
        for number, (kind, fields) in enumerate(events):
            data = json.dumps({"type": kind, "sequence_number": number, **fields})
            await _more(send, f"event: {kind}\ndata: {data}\n\n".encode())
            if model == "drop" and number == 5:
                raise ConnectionResetError("fake upstream drops the stream")
    await send({"type": "http.response.body", "body": b""})


async def _text_completions(
    send: Send, request: dict[str, Any], usage: Any, raw: bytes | None
) -> None:
    model = request.get("model")
    if not request.get("stream"):
        reply: dict[str, Any] = {
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "text": REPLY, "logprobs": None, "finish_reason": "stop"}],
        }
        if model != "nousage":
            reply["usage"] = usage
        await _send_body(send, raw if raw is not None else json.dumps(reply).encode())
        return
    await _start_stream(send)
    if raw is not None:
        await _more(send, raw)
        await send({"type": "http.response.body", "body": b""})
        return
    for index, word in enumerate(REPLY.split(" ")):
        chunk = {
            "id": "cmpl-fake",
            "object": "text_completion",
            "model": model,
            "choices": [{"index": 0, "text": word + " ", "logprobs": None, "finish_reason": None}],
        }
        await _more(send, f"data: {json.dumps(chunk)}\n\n".encode())
        if model == "drop" and index == 2:
            raise ConnectionResetError("fake upstream drops the stream")
    if (request.get("stream_options") or {}).get("include_usage") and model != "nousage":
        chunk = {"id": "cmpl-fake", "object": "text_completion", "choices": [], "usage": usage}
        await _more(send, f"data: {json.dumps(chunk)}\n\n".encode())
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


async def _start_stream(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )


async def _more(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": True})


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
