"""The Open WebUI filter (integrations/open-webui/tokendesk_filter.py), loaded as Open
WebUI loads it, its outlet run against a live tokendesk on 127.0.0.1: the events it
emits for a user with plenty, little or nothing left, and when tokendesk is down."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from tests.factories import World
from tests.fake_upstream import free_port
from tests.gateway.test_integrations import integration
from tokendesk.accounts.models import IdentityPreset
from tokendesk.db import Database
from tokendesk.ledger import service as ledger
from tokendesk.metering.service import UsageInput, record_usage

FILTER = Path(__file__).parents[2] / "integrations" / "open-webui" / "tokendesk_filter.py"


def load_filter() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tokendesk_filter", FILTER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Events:
    """Open WebUI's ``__event_emitter__``, keeping what it is given."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, event: dict[str, Any]) -> None:
        self.seen.append(event)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event["data"] for event in self.seen if event["type"] == kind]


def reply(text: str = "Hello there.") -> dict[str, Any]:
    """The body Open WebUI hands an outlet once the reply is complete."""
    return {
        "model": "demo",
        "chat_id": "3f0c5d6e-1111-4222-8333-944455556666",
        "messages": [
            {"role": "user", "content": "Say hello"},
            {"role": "assistant", "content": text},
        ],
    }


def open_webui_user(email: str, user_id: str, name: str) -> dict[str, Any]:
    """Open WebUI's ``__user__``."""
    return {"id": user_id, "email": email, "name": name, "role": "user"}


async def spend(database: Database, world: World, user_id: int, tokens: int) -> None:
    async with database.transaction() as s:
        await record_usage(
            s,
            organization_id=world.org_id,
            events=[UsageInput(f"elsewhere-{user_id}-{tokens}", user_id, "demo", tokens, 0)],
        )


async def filter_for(database: Database, world: World, url: str) -> Any:
    module = load_filter()
    instance = module.Filter()
    instance.valves = module.Filter.Valves(
        tokendesk_url=url,
        integration_key=await integration(database, world, IdentityPreset.OPEN_WEBUI),
        # A first call links or provisions the person (a write); on a shared test machine
        # that can take longer than the default allows.
        timeout_seconds=10,
    )
    return instance


async def reset_label(database: Database, user_id: int) -> str:
    async with database.transaction(write=False) as s:
        end = (await ledger.current_balance(s, user_id=user_id)).period_end
    return f"{end:%b} {end.day}, {end.year}"  # the organization's time zone is UTC


class TestAfterEachReply:
    async def test_a_user_with_plenty_left_sees_the_balance_and_next_reset(
        self, tokendesk: str, database: Database, world: World
    ) -> None:
        tokendesk_filter = await filter_for(database, world, tokendesk)
        events = Events()
        body = reply()
        out = await tokendesk_filter.outlet(
            body, open_webui_user("Alice@Example.com", "owui-alice", "Alice A."), events
        )
        assert out == reply()
        assert events.of("status") == [
            {
                "description": "50,000 tokens left · resets "
                + await reset_label(database, world.alice.id),
                "done": True,
            }
        ]
        assert events.of("notification") == []

    async def test_a_user_under_the_threshold_is_warned_with_their_request_link(
        self, tokendesk: str, database: Database, world: World
    ) -> None:
        await spend(database, world, world.nora.id, 4_100)  # 900 of 5,000 left
        tokendesk_filter = await filter_for(database, world, tokendesk)
        events = Events()
        out = await tokendesk_filter.outlet(
            reply(), open_webui_user("nora@example.com", "owui-nora", "Nora"), events
        )
        [status] = events.of("status")
        assert status["description"].startswith("900 tokens left · resets ")
        [warning] = events.of("notification")
        assert warning["type"] == "warning"
        assert warning["content"].startswith("You are running low on tokens. Ask for more tokens: ")
        link = warning["content"].rsplit(" ", 1)[1]
        assert link.startswith(f"{tokendesk}/ask/")
        assert out["messages"][-1]["content"].endswith(f"[Ask for more tokens]({link})")
        # The link opens nora's own request page, no password asked.
        async with httpx.AsyncClient() as client:
            page = await client.get(link)
        assert page.status_code == 200 and "Nora" in page.text

    async def test_a_user_with_nothing_left_is_offered_the_link(
        self, tokendesk: str, database: Database, world: World
    ) -> None:
        await spend(database, world, world.nora.id, 5_000)
        tokendesk_filter = await filter_for(database, world, tokendesk)
        events = Events()
        out = await tokendesk_filter.outlet(
            reply(), open_webui_user("nora@example.com", "owui-nora", "Nora"), events
        )
        [status] = events.of("status")
        assert status["description"].startswith("0 tokens left · resets ")
        [warning] = events.of("notification")
        assert warning["content"].startswith("You have no tokens left until the next reset.")
        assert "/ask/" in out["messages"][-1]["content"]

    async def test_a_new_open_webui_user_is_provisioned_and_shown_the_default(
        self, tokendesk: str, database: Database, world: World
    ) -> None:
        tokendesk_filter = await filter_for(database, world, tokendesk)
        events = Events()
        await tokendesk_filter.outlet(
            reply(), open_webui_user("zed@example.com", "owui-zed", "Zed Ü"), events
        )
        [status] = events.of("status")
        assert status["description"].startswith("100,000 tokens left")

    async def test_the_status_line_can_be_turned_off(
        self, tokendesk: str, database: Database, world: World
    ) -> None:
        tokendesk_filter = await filter_for(database, world, tokendesk)
        tokendesk_filter.valves.show_status = False
        events = Events()
        await tokendesk_filter.outlet(
            reply(), open_webui_user("alice@example.com", "owui-alice", "Alice"), events
        )
        assert events.seen == []


class TestNeverBreaksTheChat:
    async def test_tokendesk_down_leaves_the_reply_as_it_was_and_shows_nothing(
        self, database: Database, world: World
    ) -> None:
        tokendesk_filter = await filter_for(database, world, f"http://127.0.0.1:{free_port()}")
        tokendesk_filter.valves.timeout_seconds = 2
        events = Events()
        started = time.monotonic()
        out = await tokendesk_filter.outlet(
            reply(), open_webui_user("alice@example.com", "owui-alice", "Alice"), events
        )
        assert out == reply()
        assert events.seen == []
        assert time.monotonic() - started < tokendesk_filter.valves.timeout_seconds + 1

    async def test_a_refused_key_shows_nothing(
        self, tokendesk: str, database: Database, world: World
    ) -> None:
        tokendesk_filter = await filter_for(database, world, tokendesk)
        tokendesk_filter.valves.integration_key = "tdi_revoked-or-mistyped"
        events = Events()
        out = await tokendesk_filter.outlet(
            reply(), open_webui_user("alice@example.com", "owui-alice", "Alice"), events
        )
        assert out == reply() and events.seen == []

    async def test_no_user_or_no_key_asks_tokendesk_nothing(self) -> None:
        module = load_filter()
        events = Events()
        assert await module.Filter().outlet(reply(), None, events) == reply()
        assert events.seen == []
