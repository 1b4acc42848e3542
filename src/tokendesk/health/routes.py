"""``GET /readyz``: whether this instance can serve, for a load balancer or orchestrator."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from tokendesk.deps import AppRuntime
from tokendesk.health.readiness import readiness
from tokendesk.health.schemas import ReadyOut

router = APIRouter(tags=["health"])

# How long a prober waits before it asks again after a 503.
RETRY_SECONDS = 5


@router.get(
    "/readyz",
    response_model=ReadyOut,
    responses={503: {"model": ReadyOut, "description": "Not ready: ``failing`` names why"}},
)
async def readyz(runtime: AppRuntime) -> ReadyOut | JSONResponse:
    """Ready when the database answers, its schema is at the head and the event bus listens."""
    out = await readiness(runtime)
    if not out.failing:
        return out
    return JSONResponse(
        status_code=503,
        content=out.model_dump(mode="json"),
        headers={"Retry-After": str(RETRY_SECONDS)},
    )
