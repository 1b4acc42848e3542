"""Login, logout and the page-level helpers the chat app and admin center share."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.actor import Actor
from tokendesk.accounts.auth import (
    SESSION_COOKIE,
    SESSION_MAX_AGE,
    actor_from_session_cookie,
    csrf_token_for,
    new_session_cookie,
    read_session_cookie,
)
from tokendesk.accounts.models import User
from tokendesk.accounts.security import verify_password
from tokendesk.audit import service as audit
from tokendesk.deps import DbSession
from tokendesk.web.ratelimit import login_limiter
from tokendesk.web.templating import templates

router = APIRouter(include_in_schema=False)


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
    return csrf_token_for(str(data.get("sid", "")))


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("actor", getattr(request.state, "actor", None))
    context.setdefault("csrf_token", csrf_token(request))
    return templates.TemplateResponse(request, template, context, status_code=status_code)


def _safe_next(next_url: str | None) -> str:
    # Only local paths: never bounce a fresh login to another site.
    if next_url and next_url.startswith("/") and not next_url.startswith("//"):
        return next_url
    return "/"


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> RedirectResponse:
    # Browsers ask for this path before reading the page's <link rel="icon">.
    return RedirectResponse("/static/favicon.svg", status_code=308)


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    return render(request, "login.html", next=_safe_next(next), error=None, email="")


@router.post("/login", response_model=None)
async def login(
    request: Request,
    session: DbSession,
    email: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    email = email.strip().lower()
    client = request.client.host if request.client else "unknown"
    keys = (f"ip:{client}", f"email:{email}")
    wait = max(login_limiter.blocked(key) for key in keys)
    if wait:
        minutes = max(1, int(wait // 60) + 1)
        return render(
            request,
            "login.html",
            status_code=429,
            next=_safe_next(next),
            email=email,
            error=f"Too many attempts. Try again in {minutes} min.",
        )
    user = await session.scalar(select(User).where(func.lower(User.email) == email))
    if user is None or not user.is_active or not verify_password(user.password_hash, password):
        for key in keys:
            login_limiter.hit(key)
        return render(
            request,
            "login.html",
            status_code=401,
            next=_safe_next(next),
            email=email,
            error="Wrong email or password.",
        )
    login_limiter.reset(f"email:{email}")
    cookie, _ = new_session_cookie(user)
    await audit.record(
        session,
        organization_id=user.organization_id,
        actor_id=user.id,
        action="user.login",
        target_type="user",
        target_id=user.id,
    )
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=SESSION_MAX_AGE,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout")
async def logout(request: Request, csrf_token: Annotated[str, Form()] = "") -> Response:
    from tokendesk.accounts.auth import csrf_ok

    response = RedirectResponse("/login", status_code=303)
    if csrf_ok(request, csrf_token):
        response.delete_cookie(SESSION_COOKIE, path="/")
    return response
