"""HTTP surface of metering: other chat apps report usage here."""

from __future__ import annotations

from fastapi import APIRouter, Response

from tokendesk.deps import AppRuntime, OrgAdminReadingActor
from tokendesk.metering import service
from tokendesk.metering.schemas import UsageBatchIn, UsageBatchOut

router = APIRouter(tags=["usage"])


@router.post("/usage", response_model=UsageBatchOut)
async def report_usage(
    body: UsageBatchIn, actor: OrgAdminReadingActor, runtime: AppRuntime
) -> Response:
    """Record a batch of usage events (needs an org admin's key).

    Each event names its user by ``user_email`` or ``user_id``. An event id the
    organization already reported is not charged again: its first result comes
    back with ``replayed: true``. The whole batch is checked first; one bad event
    answers 422 naming it, and nothing is recorded.
    """
    database = runtime.database
    # Short transactions only: a request waiting for the writer holds no connection.
    async with database.transaction(write=False) as session:
        user_ids = await service.resolve_users(
            session,
            organization_id=actor.organization_id,
            refs=[(event.user_email, event.user_id) for event in body.events],
        )
    # Batches arriving together share a transaction (see ingest.UsageRecorder).
    results = await runtime.usage.record(
        organization_id=actor.organization_id,
        events=[
            service.UsageInput(
                event_id=event.event_id,
                user_id=user_id,
                model=event.model,
                prompt_tokens=event.prompt_tokens,
                completion_tokens=event.completion_tokens,
                cached_tokens=event.cached_tokens,
                reasoning_tokens=event.reasoning_tokens,
                occurred_at=event.occurred_at,
                source=event.source,
            )
            for event, user_id in zip(body.events, user_ids, strict=True)
        ],
    )
    # One validation of the whole list, serialized here: returned as a model, it would
    # be validated a second time against the response model.
    out = UsageBatchOut.model_validate({"results": results}, from_attributes=True)
    return Response(out.model_dump_json(), media_type="application/json")
