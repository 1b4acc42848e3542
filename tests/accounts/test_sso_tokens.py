"""ID tokens that must not sign anyone in: a small issuer on 127.0.0.1 that answers the
flow correctly but hands back the ID token each test crafts (wrong nonce, audience,
issuer, expired, signed with another key, or none at all)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import func, select
from werkzeug.wrappers import Request, Response

from tests.accounts.oidc_support import CLIENT_ID, serve
from tests.factories import World
from tests.serving import serving
from tokendesk.accounts.models import User
from tokendesk.app import create_app
from tokendesk.config import Settings
from tokendesk.db import Database

SIGNING_KEY = RSAKey.generate_key(2048, parameters={"kid": "good"}, private=True)
# Well past the hour of leeway any client allows.
HOURS_AGO = int(time.time()) - 3 * 3600
OTHER_KEY = RSAKey.generate_key(2048, parameters={"kid": "good"}, private=True)


@dataclass
class Issuer:
    """Discovery, JWKS, an authorize endpoint that consents at once, and a token
    endpoint answering with ``craft(nonce)``'s ID token."""

    url: str = ""
    craft: Callable[[Issuer, str], dict[str, Any] | None] = field(default=lambda i, n: None)
    nonces: dict[str, str] = field(default_factory=dict)
    # Claims the userinfo endpoint answers with; None: the provider has none.
    userinfo: dict[str, Any] | None = None

    def claims(self, nonce: str, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": self.url,
            "sub": "sub-crafted",
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": nonce,
            "email": "crafted@corp.local",
            "email_verified": True,
        }
        claims.update(changes)
        return {key: value for key, value in claims.items() if value is not None}

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.path == "/.well-known/openid-configuration":
            body: Any = {
                "issuer": self.url,
                "authorization_endpoint": f"{self.url}/authorize",
                "token_endpoint": f"{self.url}/token",
                "jwks_uri": f"{self.url}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
            }
            if self.userinfo is not None:
                body["userinfo_endpoint"] = f"{self.url}/userinfo"
        elif request.path == "/jwks":
            body = {"keys": [SIGNING_KEY.as_dict(private=False)]}
        elif request.path == "/authorize":
            code = f"code-{len(self.nonces)}"
            self.nonces[code] = request.args["nonce"]
            target = (
                request.args["redirect_uri"]
                + "?"
                + urlencode({"code": code, "state": request.args["state"]})
            )
            return Response(status=302, headers={"Location": target})(environ, start_response)
        elif request.path == "/token":
            nonce = self.nonces.get(request.form.get("code", ""), "")
            body = {"access_token": "at", "token_type": "Bearer", "expires_in": 300}
            crafted = self.craft(self, nonce)
            if crafted is not None:
                key = crafted.pop("_key", SIGNING_KEY)
                body["id_token"] = jwt.encode({"alg": "RS256", "kid": "good"}, crafted, key)
        elif request.path == "/userinfo" and self.userinfo is not None:
            if request.headers.get("Authorization") != "Bearer at":
                return Response(status=401)(environ, start_response)
            body = self.userinfo
        else:
            return Response(status=404)(environ, start_response)
        return Response(json.dumps(body), content_type="application/json")(environ, start_response)


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    issuer = Issuer()
    with serve(issuer) as url:
        issuer.url = url
        yield issuer


@pytest.fixture
async def tokendesk(
    database: Database, db_url: str, issuer: Issuer, world: World
) -> AsyncIterator[httpx.AsyncClient]:
    providers = [
        {
            "name": "corp",
            "organization": "Acme",
            "issuer": issuer.url,
            "client_id": CLIENT_ID,
            "client_secret": "secret",
        }
    ]
    settings = Settings(
        database_url=db_url,
        demo=True,
        scheduler_enabled=False,
        oidc_providers=json.dumps(providers),
    )
    app = create_app(settings, database=database)
    transport = httpx.ASGITransport(app=app)
    async with (
        serving(app),
        httpx.AsyncClient(transport=transport, base_url="http://tokendesk.test") as http,
    ):
        yield http


async def sign_in(http: httpx.AsyncClient) -> httpx.Response:
    start = await http.get("/auth/oidc/corp/login")
    assert start.status_code == 302, start.text
    async with httpx.AsyncClient(timeout=10) as browser:
        consented = await browser.get(start.headers["location"])
    back = urlsplit(consented.headers["location"])
    return await http.get(back.path, params={k: v[0] for k, v in parse_qs(back.query).items()})


async def signed_in(http: httpx.AsyncClient) -> bool:
    return (await http.get("/api/v1/me")).status_code == 200


class TestIdTokens:
    async def test_a_well_formed_token_signs_in(
        self, tokendesk: httpx.AsyncClient, issuer: Issuer
    ) -> None:
        # The control: the same issuer with honest tokens lets people in.
        issuer.craft = lambda i, nonce: i.claims(nonce)
        r = await sign_in(tokendesk)
        assert r.status_code == 303, r.text
        assert await signed_in(tokendesk)

    @pytest.mark.parametrize(
        "craft",
        [
            pytest.param(lambda i, nonce: i.claims("another-nonce"), id="wrong nonce"),
            pytest.param(lambda i, nonce: i.claims(nonce, aud="someone-else"), id="wrong audience"),
            pytest.param(
                lambda i, nonce: i.claims(nonce, iss="https://evil.example"), id="wrong issuer"
            ),
            pytest.param(
                lambda i, nonce: i.claims(
                    nonce, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600
                ),
                id="expired",
            ),
            pytest.param(
                lambda i, nonce: {**i.claims(nonce), "_key": OTHER_KEY}, id="signed by another key"
            ),
            pytest.param(lambda i, nonce: None, id="no id token"),
        ],
    )
    async def test_a_bad_token_is_refused(
        self,
        tokendesk: httpx.AsyncClient,
        issuer: Issuer,
        database: Database,
        craft: Callable[[Issuer, str], dict[str, Any] | None],
    ) -> None:
        issuer.craft = craft
        r = await sign_in(tokendesk)
        assert r.status_code == 401, r.text
        assert "could not be verified" in r.text
        assert not await signed_in(tokendesk)
        async with database.transaction(write=False) as s:
            created = await s.scalar(
                select(func.count()).select_from(User).where(User.email == "crafted@corp.local")
            )
        assert created == 0


class TestUserinfo:
    async def test_an_email_kept_out_of_the_id_token_is_read_from_userinfo(
        self, tokendesk: httpx.AsyncClient, issuer: Issuer, database: Database
    ) -> None:
        issuer.craft = lambda i, nonce: i.claims(nonce, email=None, email_verified=None)
        issuer.userinfo = {"sub": "sub-crafted", "email": "info@corp.local", "email_verified": True}
        r = await sign_in(tokendesk)
        assert r.status_code == 303, r.text
        me = await tokendesk.get("/api/v1/me")
        assert me.json()["email"] == "info@corp.local"

    async def test_userinfo_about_another_subject_is_ignored(
        self, tokendesk: httpx.AsyncClient, issuer: Issuer
    ) -> None:
        issuer.craft = lambda i, nonce: i.claims(nonce, email=None, email_verified=None)
        issuer.userinfo = {"sub": "someone-else", "email": "info@corp.local"}
        r = await sign_in(tokendesk)
        assert r.status_code == 403, r.text
        assert "did not send your email address" in r.text
        assert not await signed_in(tokendesk)
