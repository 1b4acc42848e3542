"""The FastAPI application factory."""

from __future__ import annotations

import contextlib
import gc
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from tokendesk import __version__
from tokendesk.bodies import BodyLimits, WholeBodies
from tokendesk.config import Settings, get_settings
from tokendesk.db import Database
from tokendesk.errors import AppError, ErrorOut
from tokendesk.observability import logs
from tokendesk.observability.requests import RequestLog
from tokendesk.runtime import Runtime, stopping_on_signals
from tokendesk.unavailable import DatabaseUnavailable
from tokendesk.web.headers import SecurityHeaders

log = logging.getLogger(__name__)


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for err in exc.errors():
        field = _field_name(tuple(err.get("loc", ())))
        message = str(err.get("msg", "invalid"))
        if err.get("type") == "extra_forbidden":
            message = "unknown field"
        errors.append({"field": field, "message": message})
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return JSONResponse(status_code=422, content={"detail": summary, "errors": errors})


async def _app_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AppError)
    page: Response | None = None
    if exc.status_code >= 500:
        from tokendesk.web.unavailable import page_error

        # A page's form or htmx call answered in kind; 4xx errors of pages are their own.
        page = page_error(request, exc)
    if page is not None:
        response = page
    else:
        content: dict[str, Any] = {"detail": exc.message}
        if exc.field:
            content["errors"] = [{"field": exc.field, "message": exc.message}]
        response = JSONResponse(status_code=exc.status_code, content=content)
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(math.ceil(exc.retry_after))
    return response


def _describe_errors(app: FastAPI) -> None:
    """Document the 422 body as :func:`_validation_error` writes it, not FastAPI's default."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        described = ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(described.pop("$defs", {}))
        # Every operation's 422 refers to this name; pointing it at the real shape
        # fixes them all at once.
        components["HTTPValidationError"] = described
        components.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None, *, database: Database | None = None) -> FastAPI:
    """The application; refuses a guessable secret outside demo mode, however it is served
    (a forged session cookie would otherwise let anyone in as anyone).

    Its lifespan builds the process's :class:`Runtime` (``app.state.runtime``) and
    closes it. ``database`` (tests, benchmarks) is used, with its bus, instead of
    the one ``settings`` name, and left open for its owner to close.
    """
    settings = settings or get_settings()
    settings.check_secret()
    logs.configure(settings.log_format, settings.log_level)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with Runtime.running(settings, database=database) as runtime:
            signals: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
            if database is None:
                # A server's own runtime, and everything imported so far, lives for
                # the whole process: keep it out of the collector's generations so
                # large requests (bulk decisions) don't rescan it.
                gc.collect()
                gc.freeze()
                signals = stopping_on_signals(runtime)
            app.state.runtime = runtime
            try:
                with signals:
                    yield
            finally:
                del app.state.runtime

    app = FastAPI(
        title="tokendesk",
        version=__version__,
        description="Monthly LLM token allowances, metering, increase requests and approvals.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(AppError, _app_error)
    _describe_errors(app)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        # The process lives, and nothing more: not the database, which /readyz checks.
        # A liveness probe that failed while the database restarts would have every
        # instance restarted for an outage none of them can cure.
        return {"status": "ok", "version": __version__}

    from tokendesk.events.routes import is_stream
    from tokendesk.events.stream import HandOff
    from tokendesk.gateway.dialects import outage_reply
    from tokendesk.gateway.shortcut import Shortcut
    from tokendesk.routers import include_routers

    include_routers(app)
    app.add_middleware(Shortcut)
    # Event streams are sent from here, once routing and dependencies are done with them.
    app.add_middleware(HandOff, is_stream=is_stream)
    # Around every route, the gateway's shortcut and the streams' openings: a database
    # that cannot be reached answers 503 with Retry-After, never a 500.
    app.add_middleware(DatabaseUnavailable, shape=outage_reply)
    # Every body is whole before the gateway's shortcut or any route runs.
    app.add_middleware(WholeBodies, limits=BodyLimits.of(settings))
    # Around even that, so a refused body's 413 carries the security headers too.
    app.add_middleware(SecurityHeaders)
    # Outermost: every request gets its id and its log line, a refused body's included.
    app.add_middleware(RequestLog)
    return app
