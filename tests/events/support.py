"""A live tokendesk server for event-stream tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from tests.fake_upstream import RunningServer
from tokendesk.app import create_app
from tokendesk.config import Settings
from tokendesk.db import Database


@contextlib.asynccontextmanager
async def served(
    database: Database, db_url: str, **settings: Any
) -> AsyncIterator[tuple[str, Any]]:
    """(its URL, the app) of tokendesk on a real port, with ``settings`` beside the demo's."""
    app = create_app(
        Settings(database_url=db_url, demo=True, scheduler_enabled=False, **settings),
        database=database,
    )
    async with RunningServer(app) as server:
        yield server.url, app
