"""The README's chat-app how-tos, run as written against a live tokendesk: the OpenAI
SDK example, LibreChat's endpoint headers, and the Open WebUI filter's valves."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories import World
from tests.gateway.test_integrations import integration
from tests.integrations.test_open_webui_filter import load_filter
from tokendesk.accounts.models import IdentityPreset
from tokendesk.db import Database

README = (Path(__file__).parents[2] / "README.md").read_text()


def block(after: str, language: str) -> str:
    """The first ``language`` code block after the heading ``after``."""
    start = README.index(after)
    found = re.compile(rf"```{language}\n(.*?)```", re.S).search(README, start)
    assert found is not None
    return found[1]


class TestAnyOpenAiClient:
    async def test_the_sdk_example_runs_and_prints_where_the_caller_stands(
        self, tokendesk: str, world: World
    ) -> None:
        code = block("### Any OpenAI-compatible client", "python")
        code = code.replace("http://localhost:8000", tokendesk).replace("td_...", world.alice.key)
        printed = io.StringIO()

        def run() -> None:
            with contextlib.redirect_stdout(printed):
                exec(compile(code, "README.md", "exec"), {})

        # In a thread: the SDK's client is synchronous, the server runs on this loop.
        await asyncio.to_thread(run)
        lines = printed.getvalue().splitlines()
        assert lines[0]  # the reply
        assert re.fullmatch(r"\d+ tokens left until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", lines[1])


class TestLibreChat:
    async def test_the_endpoints_headers_name_the_user_to_a_librechat_integration(
        self, tokendesk: str, database: Database, world: World
    ) -> None:
        yaml = pytest.importorskip("yaml")
        endpoint = yaml.safe_load(block("### LibreChat", "yaml"))["endpoints"]["custom"][0]
        assert endpoint["baseURL"].endswith("/v1")
        values = {"{{LIBRECHAT_USER_EMAIL}}": "lena@example.com", "{{LIBRECHAT_USER_ID}}": "lc-9"}
        headers: dict[str, Any] = {
            name: values[value] for name, value in endpoint["headers"].items()
        }
        key = await integration(database, world, IdentityPreset.LIBRECHAT)
        async with httpx.AsyncClient() as client:
            response = await client.get(
                f"{tokendesk}/v1/tokendesk/balance",
                headers={**headers, "Authorization": f"Bearer {key}"},
            )
        assert response.status_code == 200, response.text
        assert response.json()["email"] == "lena@example.com"


class TestOpenWebUi:
    def test_every_valve_the_readme_names_is_the_filters(self) -> None:
        section = README[README.index("### Open WebUI") : README.index("### LibreChat")]
        named = set(re.findall(r"`([a-z_]+)`", section)) & {
            "tokendesk_url",
            "integration_key",
            "timeout_seconds",
            "show_status",
            "low_text",
            "empty_text",
            "link_text",
            "add_link_to_reply",
            "priority",
        }
        valves = set(load_filter().Filter.Valves.model_fields)
        assert named == valves
