from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.chat.support import login
from tests.factories import Person, World, snapshot
from tokendesk.db import Database


async def create(client: httpx.AsyncClient, person: Person, **body: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/conversations", json=body, headers=person.headers)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


async def add(
    client: httpx.AsyncClient, person: Person, conversation_id: int, **body: Any
) -> httpx.Response:
    return await client.post(
        f"/api/v1/conversations/{conversation_id}/messages", json=body, headers=person.headers
    )


class TestCreateConversation:
    async def test_new_conversation_is_untitled_until_its_first_message(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        created = await create(client, world.alice, model="demo")
        assert created["title"] == "New chat"
        assert created["model"] == "demo"

    async def test_given_title_is_kept_after_the_first_message(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        created = await create(client, world.alice, title="Trip plans")
        await add(client, world.alice, created["id"], role="user", content="Where to in May?")
        response = await client.get(
            f"/api/v1/conversations/{created['id']}", headers=world.alice.headers
        )
        assert response.json()["title"] == "Trip plans"

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"title": "x" * 201}, "title"),
            ({"title": "   "}, "title"),
            ({"model": ""}, "model"),
            ({"colour": "blue"}, "colour"),
        ],
    )
    async def test_bad_input_is_refused_naming_the_field(
        self,
        client: httpx.AsyncClient,
        world: World,
        database: Database,
        body: dict[str, Any],
        field: str,
    ) -> None:
        before = await snapshot(database)
        response = await client.post(
            "/api/v1/conversations", json=body, headers=world.alice.headers
        )
        assert response.status_code == 422
        assert [e["field"] for e in response.json()["errors"]] == [field]
        assert response.json()["detail"].startswith(f"{field}:")
        assert await snapshot(database) == before

    async def test_anonymous_caller_is_refused(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/api/v1/conversations", json={})
        assert response.status_code == 401


class TestListConversations:
    async def test_lists_only_own_conversations_most_recent_first(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        first = await create(client, world.alice, title="First")
        second = await create(client, world.alice, title="Second")
        await create(client, world.bob, title="Bob's")
        await add(client, world.alice, first["id"], role="user", content="bump")

        response = await client.get("/api/v1/conversations", headers=world.alice.headers)

        assert response.status_code == 200
        page = response.json()
        assert page["total"] == 2
        assert [c["id"] for c in page["items"]] == [first["id"], second["id"]]

    async def test_limit_and_offset_page_through(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        for n in range(3):
            await create(client, world.alice, title=f"Chat {n}")
        response = await client.get(
            "/api/v1/conversations?limit=2&offset=2", headers=world.alice.headers
        )
        page = response.json()
        assert (page["total"], [c["title"] for c in page["items"]]) == (3, ["Chat 0"])

    async def test_limit_out_of_range_names_the_parameter(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.get("/api/v1/conversations?limit=0", headers=world.alice.headers)
        assert response.status_code == 422
        assert response.json()["errors"][0]["field"] == "limit"


class TestGetConversation:
    async def test_returns_messages_in_order(self, client: httpx.AsyncClient, world: World) -> None:
        created = await create(client, world.alice)
        await add(client, world.alice, created["id"], role="user", content="Hello?")
        await add(client, world.alice, created["id"], role="assistant", content="Hi!", tokens=3)

        response = await client.get(
            f"/api/v1/conversations/{created['id']}", headers=world.alice.headers
        )

        assert response.status_code == 200
        messages = response.json()["messages"]
        assert [(m["role"], m["content"], m["tokens"]) for m in messages] == [
            ("user", "Hello?", None),
            ("assistant", "Hi!", 3),
        ]

    @pytest.mark.parametrize("stranger", ["amy", "owner", "admin", "root"])
    async def test_someone_elses_conversation_is_not_found(
        self, client: httpx.AsyncClient, world: World, stranger: str
    ) -> None:
        created = await create(client, world.alice)
        response = await client.get(
            f"/api/v1/conversations/{created['id']}", headers=world.people[stranger].headers
        )
        assert response.status_code == 404
        assert response.json()["detail"] == f"conversation {created['id']} not found"

    async def test_missing_conversation_is_not_found(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.get("/api/v1/conversations/999999", headers=world.alice.headers)
        assert response.status_code == 404


class TestUpdateConversation:
    async def test_rename_and_switch_model(self, client: httpx.AsyncClient, world: World) -> None:
        created = await create(client, world.alice, model="demo")
        response = await client.patch(
            f"/api/v1/conversations/{created['id']}",
            json={"title": "Renamed", "model": "gpt-x"},
            headers=world.alice.headers,
        )
        assert response.status_code == 200
        assert (response.json()["title"], response.json()["model"]) == ("Renamed", "gpt-x")

    async def test_someone_else_cannot_rename_it(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        created = await create(client, world.alice, title="Mine")
        response = await client.patch(
            f"/api/v1/conversations/{created['id']}",
            json={"title": "Theirs"},
            headers=world.amy.headers,
        )
        assert response.status_code == 404
        again = await client.get(
            f"/api/v1/conversations/{created['id']}", headers=world.alice.headers
        )
        assert again.json()["title"] == "Mine"


class TestDeleteConversation:
    async def test_deletes_it_with_its_messages(
        self, client: httpx.AsyncClient, world: World, database: Database
    ) -> None:
        created = await create(client, world.alice)
        await add(client, world.alice, created["id"], role="user", content="bye")

        response = await client.delete(
            f"/api/v1/conversations/{created['id']}", headers=world.alice.headers
        )

        assert response.status_code == 204
        gone = await client.get(
            f"/api/v1/conversations/{created['id']}", headers=world.alice.headers
        )
        assert gone.status_code == 404
        counts = await snapshot(database)
        assert (counts["conversations"], counts["messages"]) == (0, 0)

    async def test_someone_else_cannot_delete_it(
        self, client: httpx.AsyncClient, world: World, database: Database
    ) -> None:
        created = await create(client, world.alice)
        before = await snapshot(database)
        response = await client.delete(
            f"/api/v1/conversations/{created['id']}", headers=world.admin.headers
        )
        assert response.status_code == 404
        assert await snapshot(database) == before


class TestAddMessage:
    async def test_first_user_message_names_the_conversation(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        created = await create(client, world.alice)
        content = "  Summarise   the quarterly report\nfor the board, in three bullet points please"
        response = await add(client, world.alice, created["id"], role="user", content=content)
        assert response.status_code == 201
        assert response.json()["content"] == content
        page = await client.get("/api/v1/conversations", headers=world.alice.headers)
        assert page.json()["items"][0]["title"] == "Summarise the quarterly report"

    async def test_long_first_line_is_shortened_for_the_title(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        created = await create(client, world.alice)
        await add(client, world.alice, created["id"], role="user", content="word " * 40)
        page = await client.get("/api/v1/conversations", headers=world.alice.headers)
        title = page.json()["items"][0]["title"]
        assert len(title) <= 60
        assert title.endswith("…")

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"role": "system", "content": "hi"}, "role"),
            ({"role": "user", "content": ""}, "content"),
            ({"role": "user", "content": "  \n "}, "content"),
            ({"role": "user"}, "content"),
            ({"role": "assistant", "content": "x", "tokens": -1}, "tokens"),
            ({"role": "assistant", "content": "x", "tokens": 1.5}, "tokens"),
            ({"role": "assistant", "content": "x", "tokens": 2**63}, "tokens"),
            ({"role": "assistant", "content": "x", "tokens": 10**9 + 1}, "tokens"),
            ({"role": "user", "content": "x", "extra": 1}, "extra"),
        ],
    )
    async def test_bad_message_is_refused_naming_the_field(
        self,
        client: httpx.AsyncClient,
        world: World,
        database: Database,
        body: dict[str, Any],
        field: str,
    ) -> None:
        created = await create(client, world.alice)
        before = await snapshot(database)
        response = await add(client, world.alice, created["id"], **body)
        assert response.status_code == 422
        assert [e["field"] for e in response.json()["errors"]] == [field]
        assert await snapshot(database) == before

    async def test_cannot_write_into_someone_elses_conversation(
        self, client: httpx.AsyncClient, world: World, database: Database
    ) -> None:
        created = await create(client, world.alice)
        before = await snapshot(database)
        response = await add(client, world.bob, created["id"], role="user", content="hi")
        assert response.status_code == 404
        assert await snapshot(database) == before


class TestBrowserSession:
    async def test_session_cookie_with_csrf_token_may_write(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        token = await login(client, world.alice)
        response = await client.post(
            "/api/v1/conversations", json={}, headers={"X-CSRF-Token": token}
        )
        assert response.status_code == 201

    async def test_session_cookie_without_csrf_token_is_refused(
        self, client: httpx.AsyncClient, world: World, database: Database
    ) -> None:
        await login(client, world.alice)
        before = await snapshot(database)
        response = await client.post("/api/v1/conversations", json={})
        assert response.status_code == 403
        assert await snapshot(database) == before
