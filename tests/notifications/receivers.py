"""Real receivers on 127.0.0.1: an SMTP server (aiosmtpd) keeping every mail, and an
HTTP server keeping every webhook post, checking its signature, and answering as a
test tells it to (fail, or hold a post until released)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller

from tokendesk.notifications import webhooks


class _Keeper:
    def __init__(self) -> None:
        self.mails: list[EmailMessage] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self.lock:
            self.mails.append(message)
        return "250 OK"


@dataclass
class Mailbox:
    host: str
    port: int
    keeper: _Keeper

    @property
    def mails(self) -> list[EmailMessage]:
        with self.keeper.lock:
            return list(self.keeper.mails)

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.mails if address in str(m["To"])]

    def recipients(self) -> list[str]:
        return sorted(str(m["To"]).rpartition("<")[2].rstrip(">") for m in self.mails)


@contextmanager
def smtp_server() -> Iterator[Mailbox]:
    keeper = _Keeper()
    # The controller checks its server by connecting to the port it was given: a
    # free one is picked first.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(keeper, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield Mailbox("127.0.0.1", port, keeper)
    finally:
        controller.stop()


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: bytes
    signed: bool
    received_at: float

    @property
    def key(self) -> str:
        return self.headers[webhooks.IDEMPOTENCY_HEADER]


@dataclass
class Receiver:
    base: str
    # Secrets by path, for checking signatures.
    secrets: dict[str, str] = field(default_factory=dict)
    posts: list[Post] = field(default_factory=list)
    # Answer this status (then 200 once it is used up) this many times.
    fail_status: int = 500
    failures_left: int = 0
    # Set: the next post waits for it before being answered.
    hold: asyncio.Event | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def at(self, path: str) -> list[Post]:
        return [p for p in self.posts if p.path == path]


async def _handle(receiver: Receiver, request: web.Request) -> web.Response:
    body = await request.read()
    headers = {k: v for k, v in request.headers.items()}
    secret = receiver.secrets.get(request.path, "")
    signed = webhooks.verify(
        secret,
        timestamp=headers.get(webhooks.TIMESTAMP_HEADER, ""),
        signature=headers.get(webhooks.SIGNATURE_HEADER, ""),
        body=body,
    )
    receiver.posts.append(Post(request.path, headers, body, signed, time.time()))
    receiver.arrived.set()
    if receiver.hold is not None:
        hold, receiver.hold = receiver.hold, None
        await hold.wait()
    if receiver.failures_left > 0:
        receiver.failures_left -= 1
        return web.Response(status=receiver.fail_status, text="receiver is down")
    return web.Response(text="ok")


@asynccontextmanager
async def http_receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver(base="")

    async def handle(request: web.Request) -> web.Response:
        return await _handle(receiver, request)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    receiver.base = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        await runner.cleanup()
