"""Login, logout and the page-level helpers the chat app and admin center share."""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts import signin, users
from tokendesk.accounts.actor import Actor
from tokendesk.accounts.auth import (
    SESSION_COOKIE,
    actor_from_session_cookie,
    csrf_ok,
    csrf_token_for,
    read_session_cookie,
    secure_cookies,
    set_session_cookie,
    settings_of,
)
from tokendesk.accounts.emails import MAX_EMAIL, email_key
from tokendesk.accounts.schemas import UserUpdate
from tokendesk.config import Settings
from tokendesk.deps import DbSession, client_address, database_of, prepared_password, runtime_of
from tokendesk.errors import AppError, TooManyAttempts, Unauthorized
from tokendesk.web.templating import templates

router = APIRouter(include_in_schema=False)

LOGIN_CSRF_COOKIE = "tokendesk_login"
# The longest address the users table (and the email standard) allows.


class LoginRequired(Exception):
    """Raised by page handlers; rendered as a redirect to the login page."""

    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


async def page_actor(request: Request, session: AsyncSession) -> Actor:
    actor = await actor_from_session_cookie(session, request)
    if actor is None:
        target = request.url.path
        if request.url.query:
            target += "?" + request.url.query
        raise LoginRequired(target)
    request.state.actor = actor
    return actor


def csrf_token(request: Request) -> str:
    data = read_session_cookie(request) or {}
    return csrf_token_for(settings_of(request), str(data.get("sid", "")))


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("actor", getattr(request.state, "actor", None))
    context.setdefault("csrf_token", csrf_token(request))
    return templates.TemplateResponse(request, template, context, status_code=status_code)


def signed_in_redirect(request: Request, target: str, cookie: str) -> RedirectResponse:
    """A redirect to ``target`` that sets the session cookie ``cookie``."""
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(response, request, cookie)
    return response


def safe_next(next_url: str | None) -> str:
    # Only local paths: never bounce a fresh login to another site.
    if next_url and next_url.startswith("/") and not next_url.startswith("//"):
        return next_url
    return "/"


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> RedirectResponse:
    # Browsers ask for this path before reading the page's <link rel="icon">.
    return RedirectResponse("/static/favicon.svg", status_code=308)


def _login_token(settings: Settings, nonce: str) -> str:
    digest = hmac.new(settings.secret_key.encode(), f"login-csrf:{nonce}".encode(), hashlib.sha256)
    return digest.hexdigest()


def login_page(
    request: Request,
    *,
    next_url: str | None,
    email: str = "",
    error: str | None = None,
    status_code: int = 200,
    retry_after: float | None = None,
) -> HTMLResponse:
    """The sign-in form with its pre-session CSRF token: a signed double submit, since no
    session exists yet for the token to be bound to."""
    nonce = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(16)
    next_path = safe_next(next_url)
    providers = runtime_of(request).sso.providers.values()
    response = render(
        request,
        "login.html",
        status_code=status_code,
        next=next_path,
        email=email,
        error=error,
        login_token=_login_token(settings_of(request), nonce),
        providers=[
            (provider.button, f"/auth/oidc/{provider.name}/login?{urlencode({'next': next_path})}")
            for provider in providers
        ],
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        nonce,
        httponly=True,
        samesite="lax",
        secure=secure_cookies(request),
        path="/login",
    )
    if retry_after is not None:
        response.headers["Retry-After"] = str(math.ceil(retry_after))
    return response


def _wait_text(seconds: float) -> str:
    if seconds < 90:
        return f"{math.ceil(seconds)} s"
    return f"{math.ceil(seconds / 60)} min"


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    return login_page(request, next_url=next)


@router.post("/login", response_model=None)
async def login(
    request: Request,
    email: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
    login_token: Annotated[str, Form()] = "",
) -> Response:
    email = email_key(email)
    nonce = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not nonce or not hmac.compare_digest(_login_token(settings_of(request), nonce), login_token):
        return login_page(
            request,
            next_url=next,
            email=email[:MAX_EMAIL],
            status_code=403,
            error="This sign-in form has expired. Please sign in again.",
        )
    if len(email) > MAX_EMAIL:
        return login_page(
            request,
            next_url=next,
            status_code=422,
            error=f"Email: at most {MAX_EMAIL} characters.",
        )
    try:
        runtime = runtime_of(request)
        cookie = await signin.sign_in(
            runtime.database,
            settings=settings_of(request),
            email=email,
            password=password,
            guesses=runtime.login_limiter,
            address=client_address(request),
        )
    except TooManyAttempts as exc:
        return login_page(
            request,
            next_url=next,
            email=email,
            status_code=429,
            error=f"Too many attempts. Try again in {_wait_text(exc.retry_after)}.",
            retry_after=exc.retry_after,
        )
    except Unauthorized:
        return login_page(
            request,
            next_url=next,
            email=email,
            status_code=401,
            error="Wrong email or password.",
        )
    except signin.PasswordsOff:
        return login_page(
            request,
            next_url=next,
            email=email,
            status_code=403,
            error=(
                "Your organization signs you in through its identity provider: "
                "use the single sign-on button below."
            ),
        )
    if cookie is None:
        raise LoginRequired(safe_next(next))
    response = signed_in_redirect(request, safe_next(next), cookie)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
async def logout(
    request: Request, session: DbSession, csrf_token: Annotated[str, Form()] = ""
) -> Response:
    """End this browser's session on the server, not only its cookie, and at the identity
    provider that signed it in, where that provider offers it."""
    if not csrf_ok(request, csrf_token):
        return RedirectResponse("/login", status_code=303)
    await signin.sign_out(session, request)
    from tokendesk.web.sso import SSO_COOKIE, provider_logout

    at_provider = await provider_logout(request)
    response: Response
    if at_provider is None:
        response = RedirectResponse("/login", status_code=303)
    else:
        # A page that moves on to the provider rather than a redirect: the pages'
        # Content-Security-Policy (form-action 'self') rightly stops a form's redirect
        # to another origin, and widening it for every page to suit sign-out would not.
        response = render(
            request,
            "signed_out.html",
            provider=at_provider.provider,
            provider_url=at_provider.url,
        )
        response.delete_cookie(SSO_COOKIE, path="/")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.post("/logout/everywhere")
async def logout_everywhere(
    request: Request, session: DbSession, csrf_token: Annotated[str, Form()] = ""
) -> Response:
    """Sign out every browser of the caller, this one included ("Sign out everywhere")."""
    actor = await page_actor(request, session)
    if not csrf_ok(request, csrf_token):
        return RedirectResponse("/settings", status_code=303)
    await signin.sign_out_everywhere(session, actor=actor)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# What the settings page says after a password change: a fixed set of outcomes, so
# nothing a link carries is ever shown as text.
PASSWORD_OUTCOMES = frozenset({"changed", "wrong", "missing", "short", "expired", "wait"})


@router.post("/settings/password")
async def change_password(
    request: Request,
    csrf_token: Annotated[str, Form()] = "",
    current_password: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
) -> Response:
    """The settings page's password form: the same rule as the REST API (the current
    password, from this browser session), and the other browsers are signed out."""
    database = database_of(request)
    async with database.transaction(write=False) as reading:
        actor = await page_actor(request, reading)
    outcome = "changed"
    if not csrf_ok(request, csrf_token):
        outcome = "expired"
    elif not current_password:
        outcome = "missing"
    else:
        try:
            data = UserUpdate(password=password, current_password=current_password)
        except ValidationError:
            outcome = "short"
        else:
            try:
                new_password = await prepared_password(
                    request, actor=actor, user_id=actor.user_id, data=data
                )
                async with database.transaction() as session:
                    await users.update_user(
                        session,
                        actor=actor,
                        user_id=actor.user_id,
                        data=data,
                        new_password=new_password,
                    )
            except TooManyAttempts:
                outcome = "wait"
            except AppError as exc:
                outcome = "wrong" if exc.field == "current_password" else "missing"
    return RedirectResponse(f"/settings?password={outcome}#password-title", status_code=303)
