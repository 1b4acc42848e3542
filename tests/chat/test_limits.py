"""Per-user limits on conversations: how many a member keeps, and how long a message is."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import text

from tests.chat.test_conversations_api import add, create
from tests.factories import World
from tests.serving import serving
from tokendesk.accounts.auth import build_actor
from tokendesk.accounts.models import User
from tokendesk.app import create_app
from tokendesk.chat import service as chat
from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.errors import Conflict

MOST_CONVERSATIONS = 3
MOST_CHARS = 20


@pytest.fixture
async def limited(database: Database, db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        database_url=db_url,
        demo=True,
        scheduler_enabled=False,
        conversations_per_user=MOST_CONVERSATIONS,
        message_max_chars=MOST_CHARS,
    )
    app = create_app(settings, database=database)
    async with (
        serving(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
    ):
        yield http


class TestConversationsPerUser:
    async def test_one_more_than_the_most_allowed_is_refused(
        self, limited: httpx.AsyncClient, world: World
    ) -> None:
        for _ in range(MOST_CONVERSATIONS):
            await create(limited, world.alice)
        response = await limited.post("/api/v1/conversations", json={}, headers=world.alice.headers)
        assert response.status_code == 409
        assert response.json()["detail"] == (
            "you keep 3 conversations, the most allowed; delete one to start another"
        )
        listed = await limited.get("/api/v1/conversations", headers=world.alice.headers)
        assert listed.json()["total"] == MOST_CONVERSATIONS

    async def test_deleting_one_makes_room_for_another(
        self, limited: httpx.AsyncClient, world: World
    ) -> None:
        ids = [(await create(limited, world.alice))["id"] for _ in range(MOST_CONVERSATIONS)]
        deleted = await limited.delete(
            f"/api/v1/conversations/{ids[0]}", headers=world.alice.headers
        )
        assert deleted.status_code == 204
        await create(limited, world.alice)

    async def test_another_members_conversations_do_not_count(
        self, limited: httpx.AsyncClient, world: World
    ) -> None:
        for _ in range(MOST_CONVERSATIONS):
            await create(limited, world.alice)
        await create(limited, world.bob)

    async def test_a_create_waits_for_one_in_flight_and_then_counts_it(
        self, database: Database, world: World, postgres_only: None
    ) -> None:
        async with database.transaction() as s:
            user = await s.get(User, world.alice.id)
            assert user is not None
            actor = await build_actor(s, user)
            for _ in range(MOST_CONVERSATIONS - 1):
                await chat.create_conversation(s, actor=actor)

        async def one_more() -> None:
            async with database.transaction() as s:
                await chat.create_conversation(s, actor=actor, max_conversations=MOST_CONVERSATIONS)

        async with database.transaction() as first:
            await chat.create_conversation(first, actor=actor, max_conversations=MOST_CONVERSATIONS)
            second = asyncio.create_task(one_more())
            # Until the first commits, the second waits on its lock (without the lock it
            # would count two conversations and add a fourth).
            await until(lambda: second.done() or waiting_on_a_lock(database))
        with pytest.raises(Conflict):
            await asyncio.wait_for(second, 10)
        async with database.transaction(write=False) as s:
            _, total = await chat.list_conversations(s, actor=actor)
        assert total == MOST_CONVERSATIONS


async def waiting_on_a_lock(database: Database) -> bool:
    async with database.write_engine.connect() as connection:
        waiting = await connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return bool(waiting)


async def until(condition: Callable[[], Awaitable[bool] | bool]) -> None:
    """Poll ``condition`` (there is no event to await for another connection's wait)."""
    for _ in range(500):
        result = condition()
        if result if isinstance(result, bool) else await result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition never held")


class TestMessageSize:
    async def test_a_message_over_the_most_characters_is_refused_naming_content(
        self, limited: httpx.AsyncClient, world: World
    ) -> None:
        conversation = await create(limited, world.alice)
        response = await add(
            limited, world.alice, conversation["id"], role="user", content="x" * (MOST_CHARS + 1)
        )
        assert response.status_code == 422
        assert response.json()["errors"] == [
            {"field": "content", "message": "content: must be at most 20 characters"}
        ]
        found = await limited.get(
            f"/api/v1/conversations/{conversation['id']}", headers=world.alice.headers
        )
        assert found.json()["messages"] == []
        assert found.json()["title"] == "New chat"

    async def test_a_message_of_the_most_characters_is_kept(
        self, limited: httpx.AsyncClient, world: World
    ) -> None:
        conversation = await create(limited, world.alice)
        response = await add(
            limited, world.alice, conversation["id"], role="user", content="x" * MOST_CHARS
        )
        assert response.status_code == 201, response.text


class TestChatSettings:
    @pytest.mark.parametrize("field", ["conversations_per_user", "message_max_chars"])
    def test_a_limit_of_nothing_is_refused(self, field: str) -> None:
        with pytest.raises(ValidationError, match=field):
            Settings(**{field: 0})  # type: ignore[arg-type]
