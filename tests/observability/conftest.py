from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Receive, Scope, Send

from tests.fake_upstream import FakeUpstream, RunningServer
from tests.gateway.conftest import harness

__all__ = ["RefusingUpstream", "Scrape", "harness", "scrape", "upstream"]


class RefusingUpstream(FakeUpstream):
    """The fake upstream, which answers every call with ``refuse_with`` while it is set."""

    refuse_with: int | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.refuse_with is None:
            await super().__call__(scope, receive, send)
            return
        await receive()
        body = b'{"error": {"message": "refused", "type": "invalid_request_error"}}'
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": self.refuse_with, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[FakeUpstream, str]]:
    fake = RefusingUpstream()
    async with RunningServer(fake) as server:
        yield fake, server.url


Labels = frozenset[tuple[str, str]]


class Scrape:
    """One exposition, parsed: each sample's value by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[str, dict[Labels, float]] = defaultdict(dict)
        self.label_names: set[str] = set()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[sample.name][frozenset(sample.labels.items())] = sample.value
                self.label_names.update(sample.labels)

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get(name, {}).get(frozenset(labels.items()), 0.0)

    def __contains__(self, name: str) -> bool:
        return name in self.samples


async def scrape(http: httpx.AsyncClient, **headers: str) -> Scrape:
    response = await http.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)
