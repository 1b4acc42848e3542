"""``GET /metrics``: the Prometheus exposition, on the main port or on a port of its own.

With ``TOKENDESK_METRICS_PORT`` set it is served only there (an address that need
not be reachable from where people call tokendesk), by a small server in the same
process (:class:`MetricsServer`), and the main port answers 404. With
``TOKENDESK_METRICS_TOKEN`` set, either place asks for ``Authorization: Bearer
<token>``. ``TOKENDESK_METRICS_ENABLED=0`` turns it off.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from aiohttp import web
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from tokendesk.config import Settings
from tokendesk.deps import runtime_of
from tokendesk.observability.scrape import exposition

if TYPE_CHECKING:
    from tokendesk.runtime import Runtime

router = APIRouter(tags=["health"])


def refused(settings: Settings, authorization: str | None) -> tuple[int, str] | None:
    """Why a scrape with this ``Authorization`` header is refused, or None."""
    token = settings.metrics_token
    if token is None:
        return None
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        return 401, "metrics need 'Authorization: Bearer <TOKENDESK_METRICS_TOKEN>'"
    return None


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    runtime = runtime_of(request)
    settings = runtime.settings
    if not settings.metrics_enabled or settings.metrics_port is not None:
        return JSONResponse({"detail": "Not Found"}, status_code=404)
    refusal = refused(settings, request.headers.get("authorization"))
    if refusal is not None:
        status, detail = refusal
        return JSONResponse(
            {"detail": detail}, status_code=status, headers={"WWW-Authenticate": "Bearer"}
        )
    return Response(await exposition(runtime), media_type=CONTENT_TYPE_LATEST)


class MetricsServer:
    """``/metrics`` alone on ``TOKENDESK_METRICS_HOST:TOKENDESK_METRICS_PORT``, on the
    process's event loop (the scrape's queries use the runtime's database)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.port: int | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        refusal = refused(self.runtime.settings, request.headers.get("Authorization"))
        if refusal is not None:
            status, detail = refusal
            return web.json_response(
                {"detail": detail}, status=status, headers={"WWW-Authenticate": "Bearer"}
            )
        body = await exposition(self.runtime)
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def start(self) -> None:
        settings = self.runtime.settings
        await self._runner.setup()
        site = web.TCPSite(self._runner, settings.metrics_host, settings.metrics_port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise RuntimeError(
                f"TOKENDESK_METRICS_PORT: cannot listen on {settings.metrics_host}:"
                f"{settings.metrics_port} ({exc.strerror or exc})"
            ) from exc
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else settings.metrics_port

    async def stop(self) -> None:
        await self._runner.cleanup()
