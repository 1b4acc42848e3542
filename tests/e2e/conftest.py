"""Fixtures shared by the chat app's browser tests (a module may define its own)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page

from tests.e2e.chat_site import ChatSite, chat_site, chromium, open_page


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatSite]:
    """A live server with the chat app's people, one per test module."""
    with chat_site(tmp_path_factory.mktemp("chat")) as running_site:
        yield running_site


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as instance:
        yield instance


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with open_page(browser) as tab:
        yield tab
