"""Sign-in with an identity provider (OpenID Connect, authorization code flow with PKCE).

``GET /auth/oidc/{name}/login`` sends the browser to the provider; the provider
sends it back to ``GET /auth/oidc/{name}/callback``. Authlib runs the protocol:
state and nonce are generated and checked, the code is exchanged with its PKCE
verifier, and the ID token's signature (against the provider's JWKS), issuer,
audience, expiry and nonce are verified. What the flow must remember between the
two requests (state, nonce, verifier, where to go next) travels in a short-lived
signed cookie bound to this path, so no server-side store is needed and any
instance can finish a sign-in another one started.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.integrations.base_client import OAuthError
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from joserfc.errors import JoseError

from tokendesk.accounts.auth import open_login_session, secure_cookies, settings_of
from tokendesk.accounts.sso import SignInRefused, directory_of, sign_in_user
from tokendesk.accounts.sso_config import ProviderConfig, SingleSignOn, claim
from tokendesk.config import Settings
from tokendesk.deps import database_of, runtime_of
from tokendesk.web.pages import login_page, safe_next, signed_in_redirect

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)

FLOW_COOKIE = "tokendesk_oidc"
FLOW_PATH = "/auth/oidc/"
# Long enough to type a password and answer a second factor at the provider.
FLOW_SECONDS = 15 * 60
# Remembers which provider signed this browser in, for signing out there too.
SSO_COOKIE = "tokendesk_sso"
# Clock skew tolerated on the ID token's times.
LEEWAY_SECONDS = 60


def sso_of(request: Request) -> SingleSignOn:
    sso: SingleSignOn = runtime_of(request).sso
    return sso


def _serializer(settings: Settings, purpose: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(settings.secret_key, salt=f"tokendesk-{purpose}")


def _base_url(request: Request) -> str:
    public = settings_of(request).public_url
    return public if public else str(request.base_url).rstrip("/")


def _provider(request: Request, name: str) -> ProviderConfig | None:
    return sso_of(request).providers.get(name)


def _refused(request: Request, message: str, *, status_code: int = 403) -> HTMLResponse:
    response = login_page(request, next_url=None, error=message, status_code=status_code)
    response.delete_cookie(FLOW_COOKIE, path=FLOW_PATH)
    return response


@router.get("/auth/oidc/{name}/login")
async def start(request: Request, name: str, next: str | None = None) -> Response:
    provider = _provider(request, name)
    if provider is None:
        return _refused(request, "There is no such sign-in option.", status_code=404)
    session: dict[str, Any] = {}
    request.scope["session"] = session
    redirect_uri = f"{_base_url(request)}/auth/oidc/{provider.name}/callback"
    try:
        response = (
            await sso_of(request).client(provider.name).authorize_redirect(request, redirect_uri)
        )
    except (httpx.HTTPError, OAuthError, ValueError, KeyError) as exc:
        log.warning("starting a sign-in with %s failed: %r", provider.name, exc)
        return _refused(
            request, f"{provider.button} could not be reached. Try again shortly.", status_code=502
        )
    flow = {"session": session, "next": safe_next(next)}
    response.set_cookie(
        FLOW_COOKIE,
        _serializer(settings_of(request), f"oidc-{provider.name}").dumps(flow),
        max_age=FLOW_SECONDS,
        httponly=True,
        # The provider's redirect back is a top-level navigation: Lax cookies ride along.
        samesite="lax",
        secure=secure_cookies(request),
        path=FLOW_PATH,
    )
    return response


@router.get("/auth/oidc/{name}/callback")
async def callback(request: Request, name: str) -> Response:
    provider = _provider(request, name)
    if provider is None:
        return _refused(request, "There is no such sign-in option.", status_code=404)
    settings = settings_of(request)
    try:
        flow = _serializer(settings, f"oidc-{provider.name}").loads(
            request.cookies.get(FLOW_COOKIE, ""), max_age=FLOW_SECONDS
        )
    except BadSignature:
        return _refused(
            request,
            f"This sign-in with {provider.button} expired or was not started here. "
            "Please sign in again.",
            status_code=400,
        )
    request.scope["session"] = flow.get("session") or {}
    client = sso_of(request).client(provider.name)
    try:
        token = await client.authorize_access_token(request, leeway=LEEWAY_SECONDS)
        metadata = await client.load_server_metadata()
    except (OAuthError, JoseError, httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        log.info("sign-in with %s refused: %r", provider.name, exc)
        return _refused(
            request,
            f"The sign-in with {provider.button} could not be verified. Please sign in again.",
            status_code=401,
        )
    claims = token.get("userinfo")
    if not claims or str(metadata.get("issuer", "")).rstrip("/") != provider.issuer:
        # Without an ID token nothing here was signed by the provider; a discovery
        # document naming another issuer is not the provider the operator configured.
        return _refused(
            request,
            f"The sign-in with {provider.button} could not be verified. Please sign in again.",
            status_code=401,
        )
    claims = await _with_userinfo(client, provider, metadata, token, dict(claims))
    try:
        directory = directory_of(provider, claims)
        async with database_of(request).transaction() as session:
            user = await sign_in_user(session, provider=provider, directory=directory)
            cookie = await open_login_session(
                session, settings=settings, user=user, via=provider.source
            )
    except SignInRefused as exc:
        return _refused(request, exc.message)
    response = signed_in_redirect(request, flow.get("next") or "/", cookie)
    response.delete_cookie(FLOW_COOKIE, path=FLOW_PATH)
    remembered = {"provider": provider.name, "id_token": token.get("id_token")}
    response.set_cookie(
        SSO_COOKIE,
        _serializer(settings, "sso").dumps(remembered),
        max_age=int(settings.session_hours * 3600),
        httponly=True,
        samesite="lax",
        secure=secure_cookies(request),
        path="/",
    )
    return response


@dataclass(frozen=True)
class ProviderLogout:
    """Where to send a browser so the provider that signed it in signs it out too."""

    provider: str
    url: str


async def _with_userinfo(
    client: Any,
    provider: ProviderConfig,
    metadata: dict[str, Any],
    token: dict[str, Any],
    claims: dict[str, Any],
) -> dict[str, Any]:
    """The ID token's claims, completed from the provider's userinfo endpoint when they
    lack what this provider's mapping reads (some providers keep the email or groups
    out of the ID token). The ID token's own claims always win."""
    wanted = [provider.email_claim]
    if provider.role_map or provider.team_map or provider.allowed_groups:
        wanted.append(provider.groups_claim)
    if provider.team_claim:
        wanted.append(provider.team_claim)
    if not metadata.get("userinfo_endpoint") or all(claim(claims, c) is not None for c in wanted):
        return claims
    try:
        extra = dict(await client.userinfo(token=token))
    except (OAuthError, JoseError, httpx.HTTPError, ValueError, TypeError) as exc:
        log.info("userinfo from %s skipped: %r", provider.name, exc)
        return claims
    # Userinfo speaks for the ID token's subject only (OpenID Connect Core 5.3.2).
    if extra.get("sub") != claims.get("sub"):
        log.info("userinfo from %s named another subject; ignored", provider.name)
        return claims
    return {**extra, **claims}


async def provider_logout(request: Request) -> ProviderLogout | None:
    """The provider's end-session address for this browser, when the provider that
    signed it in offers RP-initiated logout; None otherwise."""
    raw = request.cookies.get(SSO_COOKIE)
    if not raw:
        return None
    try:
        remembered = _serializer(settings_of(request), "sso").loads(raw)
    except BadSignature:
        return None
    provider = _provider(request, str(remembered.get("provider")))
    if provider is None:
        return None
    client = sso_of(request).client(provider.name)
    try:
        metadata = await client.load_server_metadata()
        if not metadata.get("end_session_endpoint"):
            return None
        created = await client.create_logout_url(
            post_logout_redirect_uri=f"{_base_url(request)}/login",
            id_token_hint=remembered.get("id_token"),
            client_id=provider.client_id,
        )
    except (httpx.HTTPError, OAuthError, RuntimeError, ValueError) as exc:
        log.info("signing out at %s skipped: %r", provider.name, exc)
        return None
    return ProviderLogout(provider=provider.name, url=str(created["url"]))
