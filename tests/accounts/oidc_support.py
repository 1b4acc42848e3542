"""A real OpenID Connect provider on 127.0.0.1 (oidc-provider-mock), and a browser's
walk through the sign-in: tokendesk's login redirect, the provider's form, the
callback."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import oidc_provider_mock
import pytest
import werkzeug.serving

CLIENT_ID = "tokendesk-test"
CLIENT_SECRET = "tokendesk-test-secret"


@dataclass
class Provider:
    issuer: str

    def set_user(self, sub: str, **claims: Any) -> None:
        """What the provider will say about ``sub`` (its directory entry)."""
        r = httpx.put(f"{self.issuer}/users/{sub}", json=claims, timeout=10)
        assert r.status_code == 204, r.text

    def config(self, **options: Any) -> str:
        """``TOKENDESK_OIDC_PROVIDERS`` with one provider, ``corp``, for Acme."""
        provider = {
            "name": "corp",
            "label": "Corp SSO",
            "organization": "Acme",
            "issuer": self.issuer,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            **options,
        }
        return json.dumps([provider])


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """A WSGI app on 127.0.0.1, in a thread, for the duration of the block."""
    server = werkzeug.serving.make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[Provider]:
    # The provider refuses plain http unless told this is a test; tokendesk itself talks
    # to providers over whatever the issuer URL says.
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")
    with serve(oidc_provider_mock.app(require_nonce=True)) as url:
        yield Provider(url)


async def sign_in(
    http: httpx.AsyncClient, provider: Provider, sub: str, *, next_url: str = "/"
) -> httpx.Response:
    """Click "Sign in with ...", pick ``sub`` on the provider's form, follow it back:
    the response of tokendesk's callback."""
    start = await http.get("/auth/oidc/corp/login", params={"next": next_url})
    assert start.status_code == 302, start.text
    authorize = start.headers["location"]
    assert authorize.startswith(provider.issuer)
    async with httpx.AsyncClient(timeout=10) as browser:
        form = await browser.get(authorize)
        assert form.status_code == 200, form.text
        chosen = await browser.post(authorize, data={"sub": sub})
    assert chosen.status_code == 302, chosen.text
    back = urlsplit(chosen.headers["location"])
    assert back.path == "/auth/oidc/corp/callback", back
    return await http.get(back.path, params={k: v[0] for k, v in parse_qs(back.query).items()})
