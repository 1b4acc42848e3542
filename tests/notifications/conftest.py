"""Notification fixtures: a real SMTP server and webhook receiver on 127.0.0.1, the
settings that point the worker at them, and a worker over the test's database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.notifications.receivers import Mailbox, Receiver, http_receiver, smtp_server
from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.notifications.worker import NotificationWorker


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    with smtp_server() as box:
        yield box


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with http_receiver() as r:
        yield r


@pytest.fixture
def settings(db_url: str, mailbox: Mailbox) -> Settings:
    return Settings(
        database_url=db_url,
        demo=True,
        scheduler_enabled=False,
        notify_worker_enabled=False,
        smtp_host=mailbox.host,
        smtp_port=mailbox.port,
        smtp_security="none",
        smtp_from="desk@acme.example",
        public_url="https://tokens.acme.example",
        webhook_timeout_seconds=5,
        smtp_timeout_seconds=5,
        notify_lease_seconds=60,
    )


@pytest.fixture
async def worker(settings: Settings, database: Database) -> AsyncIterator[NotificationWorker]:
    w = NotificationWorker(settings, database)
    yield w
    await w.close()
