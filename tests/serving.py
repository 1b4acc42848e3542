"""Apps under test with their lifespan run, as a server runs them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from tokendesk.runtime import Runtime


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[Runtime]:
    """``app``'s runtime, built by its lifespan and closed by it on the way out
    (``httpx.ASGITransport`` alone never runs the lifespan)."""
    async with app.router.lifespan_context(app):
        runtime: Runtime = app.state.runtime
        yield runtime
