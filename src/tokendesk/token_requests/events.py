"""What the token-request workflow tells the real-time bus (published after commit).

The requester hears about their own request (``request.updated``, carrying the
request exactly as the API returns it); admins in scope hear that the queue
changed (``queue.changed``, with the request's team so team owners see theirs).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.actor import Actor
from tokendesk.events.bus import Event, emit
from tokendesk.ledger import service as ledger
from tokendesk.ledger.models import EntryKind
from tokendesk.token_requests.models import RequestStatus
from tokendesk.token_requests.repository import AnyRow
from tokendesk.token_requests.schemas import TokenRequestOut, json_time, request_view


def request_event(
    request: dict[str, Any], *, user_id: int, organization_id: int, change: str
) -> Event:
    """``request`` is :class:`TokenRequestOut` as JSON (see ``schemas.request_view``)."""
    return Event(
        type="request.updated",
        audience="user",
        user_id=user_id,
        organization_id=organization_id,
        data={"request": request, "change": change},
    )


def queue_event(
    *, organization_id: int, team_id: int | None, change: str, status: str, **data: Any
) -> Event:
    return Event(
        type="queue.changed",
        audience="admins",
        organization_id=organization_id,
        team_id=team_id,
        data={"change": change, "status": status, **data},
    )


def emit_change(
    session: AsyncSession, out: TokenRequestOut, *, organization_id: int, change: str
) -> None:
    """One request changed: tell its requester and the queue."""
    request = out.model_dump(mode="json")
    emit(
        session,
        request_event(request, user_id=out.user.id, organization_id=organization_id, change=change),
    )
    emit(
        session,
        queue_event(
            organization_id=organization_id,
            team_id=out.team.id if out.team else None,
            change=change,
            status=out.status.value,
            request_id=out.id,
        ),
    )


GRANT = EntryKind.GRANT.value


BULK_EVENT_IDS = 100


def emit_bulk(
    session: AsyncSession,
    *,
    actor: Actor,
    to: RequestStatus,
    note: str | None,
    now: datetime,
    org_id: int,
    found: dict[int, AnyRow],
    changed: Sequence[AnyRow],
    balances: dict[int, AnyRow],
) -> None:
    """One notice per requester, one balance update per credited user, and one
    queue summary per team rather than thousands of queue events."""
    by_team: dict[int | None, list[int]] = defaultdict(list)
    change = to.value
    decision = {
        "status": change,
        "decided_at": json_time(now),
        "decided_by_id": actor.user_id,
        "decider_name": actor.name,
        "decision_note": note,
        "decision_kind": "bulk",
    }
    credited = ledger.balance_snapshots(balances.values(), cause=GRANT)
    # Thousands of rows: unpack tuples and zip known keys rather than reading
    # attributes or calling Row._asdict(), and update in place.
    fields = next(iter(found.values()))._fields if found else ()
    notices: list[Event] = []
    for request_id, user_id, team_id, approved_amount in changed:  # see transitions.transition
        by_team[team_id].append(request_id)
        merged = dict(zip(fields, found[request_id], strict=True))
        merged.update(decision)
        merged["approved_amount"] = approved_amount
        balance = credited.get(user_id)
        if balance is not None:
            merged["current_balance"] = balance["remaining"]
        notices.append(
            request_event(
                request_view(merged), user_id=user_id, organization_id=org_id, change=change
            )
        )
    emit(session, *notices)
    emit(
        session,
        *[
            Event(type="balance.changed", organization_id=org_id, user_id=user_id, data=data)
            for user_id, data in credited.items()
        ],
    )
    for team_id, request_ids in by_team.items():
        emit(
            session,
            queue_event(
                organization_id=org_id,
                team_id=team_id,
                change=change,
                status=change,
                # Viewers re-fetch on this event; a sample of ids keeps it under the
                # PostgreSQL NOTIFY size cap however large the bulk decision was.
                request_ids=request_ids[:BULK_EVENT_IDS],
                count=len(request_ids),
                bulk=True,
            ),
        )
