"""The application factory: what every response carries, and what it refuses to run with."""

from __future__ import annotations

import httpx
import pytest

from tokendesk.app import create_app
from tokendesk.config import InsecureSecret, Settings
from tokendesk.db import Database


class TestSecret:
    @pytest.mark.parametrize("secret", ["change-me", "short"])
    def test_a_guessable_secret_is_refused_however_the_app_is_built(self, secret: str) -> None:
        with pytest.raises(InsecureSecret, match="TOKENDESK_SECRET_KEY"):
            create_app(Settings(secret_key=secret, demo=False))

    def test_demo_mode_tolerates_the_placeholder(self) -> None:
        assert create_app(Settings(demo=True)) is not None

    def test_a_long_random_secret_is_accepted(self) -> None:
        settings = Settings(secret_key="s" * 40, demo=False)
        assert create_app(settings) is not None


class TestSecurityHeaders:
    @pytest.mark.parametrize("path", ["/login", "/healthz", "/static/app.css", "/nowhere"])
    async def test_every_response_carries_them(
        self, client: httpx.AsyncClient, database: Database, path: str
    ) -> None:
        response = await client.get(path)
        directives = dict(
            part.strip().split(" ", 1)
            for part in response.headers["content-security-policy"].split(";")
        )
        assert directives["script-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "same-origin"
