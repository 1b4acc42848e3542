from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fake_upstream import RunningServer
from tokendesk.app import create_app
from tokendesk.config import Settings
from tokendesk.db import Database


@pytest.fixture
async def tokendesk(database: Database, db_url: str) -> AsyncIterator[str]:
    """A live tokendesk on 127.0.0.1 serving the demo model; its address."""
    app = create_app(
        Settings(database_url=db_url, demo=True, scheduler_enabled=False), database=database
    )
    async with RunningServer(app) as server:
        yield server.url
