"""Token-request endpoints: HTTP only; every rule lives in the service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query

from tokendesk.bounds import Offset, QueryId, path_id
from tokendesk.deps import CurrentActor, CurrentReader, DbSession, ReadSession
from tokendesk.token_requests import bulk as bulk_service
from tokendesk.token_requests import decisions, service
from tokendesk.token_requests.models import RequestStatus
from tokendesk.token_requests.schemas import (
    ApproveIn,
    BulkIn,
    BulkOut,
    PendingCount,
    RejectIn,
    Sort,
    StatusCounts,
    SubmitIn,
    TokenRequestOut,
    TokenRequestPage,
)

router = APIRouter(prefix="/token-requests", tags=["token requests"])

RequestId = Annotated[int, path_id("token request")]

Search = Annotated[
    str | None, Query(max_length=200, description="Part of the requester's name or email.")
]


@router.post("", status_code=201, summary="Ask for more tokens")
async def submit_request(
    body: SubmitIn, session: DbSession, actor: CurrentActor
) -> TokenRequestOut:
    return await decisions.submit(session, actor=actor, amount=body.amount, reason=body.reason)


@router.get("", summary="The requests the caller may see")
async def list_requests(
    session: ReadSession,
    actor: CurrentReader,
    status: RequestStatus | None = None,
    team_id: QueryId | None = None,
    q: Search = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_LIMIT)] = 50,
    offset: Offset = 0,
    sort: Sort = "created_at",
) -> TokenRequestPage:
    items, total = await service.list_requests(
        session,
        actor=actor,
        status=status,
        team_id=team_id,
        q=q,
        limit=limit,
        offset=offset,
        sort=sort,
    )
    return TokenRequestPage(items=items, total=total)


# Fixed paths come before /{request_id} so they are not read as an id.
@router.get("/pending-count", summary="Pending requests the caller may decide or see")
async def pending_count(session: ReadSession, actor: CurrentReader) -> PendingCount:
    return PendingCount(count=await service.pending_count(session, actor=actor))


@router.get("/counts", summary="Requests per status, for the queue's tabs")
async def status_counts(
    session: ReadSession, actor: CurrentReader, team_id: QueryId | None = None, q: Search = None
) -> StatusCounts:
    return await service.counts(session, actor=actor, team_id=team_id, q=q)


@router.post("/bulk", summary="Approve or reject many requests in one transaction")
async def bulk_decide(body: BulkIn, session: DbSession, actor: CurrentActor) -> BulkOut:
    return await bulk_service.bulk(
        session, actor=actor, action=body.action, ids=body.ids, note=body.note
    )


@router.get("/{request_id}")
async def get_request(
    request_id: RequestId, session: ReadSession, actor: CurrentReader
) -> TokenRequestOut:
    return await service.get(session, actor=actor, request_id=request_id)


@router.post("/{request_id}/approve", summary="Approve, optionally with another amount")
async def approve_request(
    request_id: RequestId,
    session: DbSession,
    actor: CurrentActor,
    body: Annotated[ApproveIn | None, Body()] = None,
) -> TokenRequestOut:
    body = body or ApproveIn()
    return await decisions.approve(
        session, actor=actor, request_id=request_id, amount=body.amount, note=body.note
    )


@router.post("/{request_id}/reject")
async def reject_request(
    request_id: RequestId,
    session: DbSession,
    actor: CurrentActor,
    body: Annotated[RejectIn | None, Body()] = None,
) -> TokenRequestOut:
    body = body or RejectIn()
    return await decisions.reject(session, actor=actor, request_id=request_id, note=body.note)


@router.post("/{request_id}/cancel", summary="Withdraw your own pending request")
async def cancel_request(
    request_id: RequestId, session: DbSession, actor: CurrentActor
) -> TokenRequestOut:
    return await decisions.cancel(session, actor=actor, request_id=request_id)
