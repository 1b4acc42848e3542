"""The gateway's out-of-tokens refusal carries the caller's personal request link, which
opens that person's request page (``/ask/{token}``)."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.factories import World
from tests.gateway.conftest import Harness
from tokendesk.config import Settings
from tokendesk.token_requests.links import read_link

LINK = re.compile(r"Ask for more tokens here: (\S+)$")
PUBLIC = {"public_url": "https://tokens.example.com/"}


def chat(model: str, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], **extra}


def link_in(response: httpx.Response) -> str:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "insufficient_quota"
    found = LINK.search(error["message"])
    assert found is not None, error["message"]
    return found[1]


class TestRefusalLink:
    async def test_the_refusal_links_to_the_callers_own_request_page(
        self, harness: Harness, world: World
    ) -> None:
        # nora has 5,000 tokens: a completion budget beyond that is refused.
        refused = await harness.http.post(
            "/v1/chat/completions", json=chat("fast", max_tokens=6000), headers=world.nora.headers
        )
        link = link_in(refused)
        assert refused.headers["x-should-retry"] == "false"
        assert link.startswith("/ask/")
        assert read_link(harness.gateway.settings, link.rsplit("/", 1)[1]).user_id == world.nora.id
        page = await harness.http.get(link)
        assert page.status_code == 200
        assert "Nora" in page.text and "5,000" in page.text
        assert harness.upstream.bodies == []

    async def test_the_link_lets_that_person_ask_for_more(
        self, harness: Harness, world: World
    ) -> None:
        refused = await harness.http.post(
            "/v1/chat/completions", json=chat("fast", max_tokens=6000), headers=world.nora.headers
        )
        link = link_in(refused)
        sent = await harness.http.post(f"{link}/request", data={"amount": "2000"})
        assert sent.status_code == 303
        mine = await harness.http.get(
            "/api/v1/token-requests", params={"status": "pending"}, headers=world.nora.headers
        )
        assert [(r["user"]["id"], r["amount"]) for r in mine.json()["items"]] == [
            (world.nora.id, 2000)
        ]

    @pytest.mark.parametrize("harness", [PUBLIC], indirect=True)
    async def test_under_a_public_url_the_link_is_absolute(
        self, harness: Harness, world: World
    ) -> None:
        refused = await harness.http.post(
            "/v1/chat/completions", json=chat("fast", max_tokens=6000), headers=world.nora.headers
        )
        link = link_in(refused)
        assert link.startswith("https://tokens.example.com/ask/")
        path = link.removeprefix("https://tokens.example.com")
        assert (await harness.http.get(path)).status_code == 200


class TestDemoModelRefusal:
    async def test_the_demo_models_refusal_carries_the_link_too(
        self, client: httpx.AsyncClient, settings: Settings, world: World
    ) -> None:
        refused = await client.post(
            "/v1/chat/completions", json=chat("demo", max_tokens=6000), headers=world.nora.headers
        )
        link = link_in(refused)
        assert read_link(settings, link.rsplit("/", 1)[1]).user_id == world.nora.id
