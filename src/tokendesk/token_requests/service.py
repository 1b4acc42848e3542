"""Token requests: the rules of scope and the scoped queue (transitions: ``decisions``).

Scope is decided here, not in routes: members see their own requests, team
owners also those of the teams they own, org and super admins everything in
the active organization. What a caller may not see answers 404, like a missing
request. Nobody decides their own request. Services flush, never commit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.actor import Actor
from tokendesk.accounts.lookups import get_organization
from tokendesk.accounts.models import Organization, Role
from tokendesk.db import utcnow
from tokendesk.errors import AppError, Conflict, Forbidden, InvalidInput, NotFound
from tokendesk.events.bus import emit
from tokendesk.token_requests import events
from tokendesk.token_requests import repository as repo
from tokendesk.token_requests.models import RequestStatus
from tokendesk.token_requests.repository import Scope
from tokendesk.token_requests.schemas import (
    MAX_BULK_IDS,
    MAX_TEXT,
    StatusCounts,
    TokenRequestOut,
    to_out,
)

MAX_LIMIT = 500


# ---------------------------------------------------------------- rules


def scope_for(actor: Actor) -> Scope:
    if actor.is_org_admin:
        return Scope(actor.organization_id, everything=True, user_id=actor.user_id)
    teams = actor.owned_team_ids if actor.role == Role.TEAM_OWNER else frozenset()
    return Scope(actor.organization_id, everything=False, user_id=actor.user_id, team_ids=teams)


def require_decider(actor: Actor) -> None:
    if not actor.is_admin:
        raise Forbidden("only team owners and admins decide token requests")


def check_amount(amount: object, *, org: Organization) -> int:
    if type(amount) is not int or amount <= 0:
        raise InvalidInput("amount: must be a positive whole number of tokens", field="amount")
    if amount > org.max_request:
        raise InvalidInput(f"amount: must be at most {org.max_request}", field="amount")
    return amount


def clean_text(value: str | None, *, field: str) -> str | None:
    if value is None:
        return None
    if len(value) > MAX_TEXT:
        raise InvalidInput(f"{field}: must be at most {MAX_TEXT} characters", field=field)
    return value.strip() or None


def deciding_teams(actor: Actor) -> frozenset[int] | None:
    """The teams whose requests the caller decides; None for everything in the organization."""
    scope = scope_for(actor)
    return None if scope.everything else scope.team_ids


def not_pending(request_id: int, status: str | None) -> AppError:
    """Why a transition changed nothing: gone, decided, or (still pending) no longer
    in the caller's scope, because the requester moved to another team meanwhile."""
    if status is None or status == RequestStatus.PENDING:
        return NotFound(f"token request {request_id} not found")
    return Conflict(f"token request {request_id} is already {status}")


# ---------------------------------------------------------------- lookups


async def visible_row(
    session: AsyncSession, *, actor: Actor, request_id: int, org: Organization, now: datetime
) -> Mapping[str, Any]:
    row = await repo.get_item(
        session, scope=scope_for(actor), request_id=request_id, now=now, org=org
    )
    if row is None:
        raise NotFound(f"token request {request_id} not found")
    return row._asdict()


async def reloaded(
    session: AsyncSession, *, organization_id: int, request_id: int, now: datetime
) -> TokenRequestOut:
    # The organization is looked up again: a rollover in this transaction expires it.
    org = await get_organization(session, organization_id)
    everything = Scope(organization_id, everything=True, user_id=0)
    row = await repo.get_item(session, scope=everything, request_id=request_id, now=now, org=org)
    assert row is not None, "a request written in this transaction must be readable"
    return to_out(row._asdict())


async def get(
    session: AsyncSession, *, actor: Actor, request_id: int, now: datetime | None = None
) -> TokenRequestOut:
    org = await get_organization(session, actor.organization_id)
    row = await visible_row(
        session,
        actor=actor,
        request_id=request_id,
        org=org,
        now=now or utcnow(),
    )
    return to_out(row)


@dataclass(frozen=True)
class PendingRef:
    id: int
    amount: int


async def own_pending(session: AsyncSession, *, actor: Actor) -> PendingRef | None:
    """The caller's own pending request, if any (the chat app shows it in its header)."""
    return await pending_of(session, user_id=actor.user_id)


async def pending_of(session: AsyncSession, *, user_id: int) -> PendingRef | None:
    """The user's pending request, if any, for whoever may already see their balance."""
    row = await repo.pending_of_user(session, user_id=user_id)
    return None if row is None else PendingRef(row.id, row.amount)


@dataclass(frozen=True)
class PendingSelection:
    """Every pending request matching a queue's filters, as "select all N matching" needs."""

    ids: list[int]
    tokens: int
    own: int  # the caller's own requests: counted, never selected (nobody decides their own)


async def matching_pending(
    session: AsyncSession,
    *,
    actor: Actor,
    team_id: int | None = None,
    q: str | None = None,
    now: datetime | None = None,
) -> PendingSelection:
    """One read of the whole pending queue in the caller's scope, oldest first.

    Paging through :func:`list_requests` 500 rows at a time costs several times
    as much for a queue of 10,000, and this is the path a morning's bulk takes.
    """
    org = await get_organization(session, actor.organization_id)
    rows = await repo.list_items(
        session,
        scope=scope_for(actor),
        status=RequestStatus.PENDING.value,
        team_id=team_id,
        q=(q or "").strip() or None,
        sort="created_at",
        limit=MAX_BULK_IDS,
        offset=0,
        now=now or utcnow(),
        org=org,
    )
    ids: list[int] = []
    tokens = own = 0
    for row in rows:
        if row.user_id == actor.user_id:
            own += 1
        else:
            ids.append(row.id)
            tokens += row.amount
    return PendingSelection(ids, tokens, own)


async def list_requests(
    session: AsyncSession,
    *,
    actor: Actor,
    status: str | None = None,
    team_id: int | None = None,
    q: str | None = None,
    limit: int = 50,
    offset: int = 0,
    sort: str = "created_at",
    now: datetime | None = None,
) -> tuple[list[TokenRequestOut], int]:
    """One page of the caller's queue and the total; one query each, whatever the size."""
    if status is not None and status not in RequestStatus._value2member_map_:
        choices = ", ".join(s.value for s in RequestStatus)
        raise InvalidInput(f"status: must be one of {choices}", field="status")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit: must be between 1 and {MAX_LIMIT}", field="limit")
    if offset < 0:
        raise InvalidInput("offset: must not be negative", field="offset")
    if sort not in repo.ORDERINGS:
        raise InvalidInput(f"sort: must be one of {', '.join(repo.ORDERINGS)}", field="sort")
    q = (q or "").strip() or None
    org = await get_organization(session, actor.organization_id)
    scope = scope_for(actor)
    rows = await repo.list_items(
        session,
        scope=scope,
        status=status,
        team_id=team_id,
        q=q,
        sort=sort,
        limit=limit,
        offset=offset,
        now=now or utcnow(),
        org=org,
    )
    total = await repo.count_items(session, scope=scope, status=status, team_id=team_id, q=q)
    return [to_out(row._asdict()) for row in rows], total


async def counts(
    session: AsyncSession, *, actor: Actor, team_id: int | None = None, q: str | None = None
) -> StatusCounts:
    """Requests per status (the admin center's tabs), under the same filters as the list."""
    q = (q or "").strip() or None
    by_status = await repo.status_counts(session, scope=scope_for(actor), team_id=team_id, q=q)
    return StatusCounts(**by_status, all=sum(by_status.values()))


async def pending_count(session: AsyncSession, *, actor: Actor) -> int:
    return await repo.count_items(
        session, scope=scope_for(actor), status=RequestStatus.PENDING, team_id=None, q=None
    )


async def requester_moved(
    session: AsyncSession,
    *,
    user_id: int,
    organization_id: int,
    teams: tuple[int | None, int | None],
) -> None:
    """A pending request moves with its requester: the queues of the team they
    left and the team they joined both change (no row does, see ``repo.request_team``)."""
    pending = await repo.pending_of_user(session, user_id=user_id)
    if pending is None:
        return
    for team_id in dict.fromkeys(teams):
        emit(
            session,
            events.queue_event(
                organization_id=organization_id,
                team_id=team_id,
                change="moved",
                status=RequestStatus.PENDING.value,
                request_id=pending.id,
            ),
        )
