"""Every domain's router, mounted in one place."""

from __future__ import annotations

import importlib
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

# Each module exposes ``router``. A missing module is a bug, not an optional feature.
API_ROUTERS = [
    "tokendesk.accounts.routes",
    "tokendesk.accounts.integration_routes",
    "tokendesk.token_requests.routes",
    "tokendesk.token_requests.rule_routes",
    "tokendesk.metering.routes",
    "tokendesk.audit.routes",
    "tokendesk.chat.routes",
    "tokendesk.analytics.routes",
    "tokendesk.notifications.routes",
]
# Mounted at the root: pages, the SSE stream and the OpenAI-compatible gateway.
ROOT_ROUTERS = [
    "tokendesk.health.routes",
    "tokendesk.observability.routes",
    "tokendesk.web.pages",
    "tokendesk.web.sso",
    "tokendesk.events.routes",
    "tokendesk.gateway.routes",
    "tokendesk.gateway.embeddings",
    "tokendesk.gateway.responses",
    "tokendesk.gateway.text_completions",
    "tokendesk.gateway.messages",
    "tokendesk.web.chat",
    "tokendesk.web.ask",
    "tokendesk.web.admin.routes",
]

STATIC_DIR = Path(__file__).parent / "web" / "static"


def _router(module_name: str) -> APIRouter:
    router: APIRouter = importlib.import_module(module_name).router
    return router


async def _login_required(request: Request, exc: Exception) -> Response:
    from tokendesk.web.pages import LoginRequired

    assert isinstance(exc, LoginRequired)
    if request.headers.get("hx-request"):
        # htmx cannot follow a redirect into a full page; ask it to navigate instead.
        return Response(status_code=401, headers={"HX-Redirect": "/login"})
    return RedirectResponse(f"/login?next={quote(exc.next_url)}", status_code=303)


def include_routers(app: FastAPI) -> None:
    from tokendesk.web.pages import LoginRequired

    for module_name in API_ROUTERS:
        app.include_router(_router(module_name), prefix="/api/v1")
    for module_name in ROOT_ROUTERS:
        app.include_router(_router(module_name))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_exception_handler(LoginRequired, _login_required)
