"""Every domain's router, mounted in one place."""

from __future__ import annotations

import importlib

from fastapi import APIRouter, FastAPI

# (module, prefix): each module exposes ``router``; a missing module is a bug, not optional.
API_ROUTERS = [
    "tokendesk.accounts.routes",
    "tokendesk.token_requests.routes",
    "tokendesk.metering.routes",
    "tokendesk.audit.routes",
]


def include_routers(app: FastAPI) -> None:
    for module_name in API_ROUTERS:
        module = importlib.import_module(module_name)
        router: APIRouter = module.router
        app.include_router(router, prefix="/api/v1")
