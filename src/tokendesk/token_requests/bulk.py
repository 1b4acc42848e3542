"""Bulk approve or reject: one transaction, a handful of set-based statements.

Each step handles every request at once, the ids travelling as one bound
parameter (see ``repository.among``): one read to classify, one conditional
UPDATE to decide, one UPDATE to grant and one INSERT ... SELECT for its ledger
entries (``ledger.grant_approved``), one INSERT ... SELECT for audit rows.
Approving 10,000 requests is the same handful of statements as approving ten.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.actor import Actor
from tokendesk.accounts.lookups import get_organization
from tokendesk.bounds import BALANCE_CEILING, is_id
from tokendesk.db import utcnow
from tokendesk.errors import InvalidInput
from tokendesk.ledger import service as ledger
from tokendesk.notifications import outbox
from tokendesk.observability import counted_decisions
from tokendesk.token_requests import events, pool, service
from tokendesk.token_requests import repository as repo
from tokendesk.token_requests import transitions_repository as transitions
from tokendesk.token_requests.models import DecisionKind, RequestStatus
from tokendesk.token_requests.repository import AnyRow
from tokendesk.token_requests.schemas import MAX_BULK_IDS, BulkOut, Skipped

SKIP_REASONS = {
    RequestStatus.APPROVED.value: "already approved",
    RequestStatus.REJECTED.value: "already rejected",
    RequestStatus.CANCELLED.value: "cancelled",
}
NOT_FOUND = "not found"
OWN_REQUEST = "own request"
ACTIONS = {"approve": RequestStatus.APPROVED, "reject": RequestStatus.REJECTED}


def _check_ids(ids: Sequence[object]) -> list[int]:
    if not 1 <= len(ids) <= MAX_BULK_IDS:
        raise InvalidInput(f"ids: give between 1 and {MAX_BULK_IDS} ids", field="ids")
    checked: list[int] = []
    for value in ids:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput("ids: every id must be a whole number", field="ids")
        checked.append(value)
    if len(set(checked)) != len(checked):
        raise InvalidInput("ids: must not contain duplicates", field="ids")
    return checked


async def bulk(
    session: AsyncSession,
    *,
    actor: Actor,
    action: str,
    ids: Sequence[int],
    note: str | None = None,
    now: datetime | None = None,
) -> BulkOut:
    """Decide every pending, in-scope request among ``ids``; report the rest as skipped.

    With a pool, the whole batch must fit in what is left of it, or nothing is
    decided. Requests decided concurrently by someone else are skipped, never
    granted twice: the decision is a conditional UPDATE on ``status = 'pending'``.
    """
    if action not in ACTIONS:
        raise InvalidInput("action: must be 'approve' or 'reject'", field="action")
    to = ACTIONS[action]
    ids = _check_ids(ids)
    note = service.clean_text(note, field="note")
    service.require_decider(actor)
    now = now or utcnow()
    org = await get_organization(session, actor.organization_id)
    org_id, has_pool = org.id, org.pool is not None
    approving = to is RequestStatus.APPROVED
    if approving and has_pool:
        # Lock before classifying, so a concurrent approval's grants and decisions
        # are all visible by the time this batch is sized against the pool.
        await pool.lock_organization(session, organization_id=org_id)

    # An id no request can have is not looked for: it is reported as not found.
    possible = sorted(request_id for request_id in ids if is_id(request_id))
    rows = await repo.items_by_ids(
        session,
        scope=service.scope_for(actor),
        ids=possible,
        now=now,
        org=org,
    )
    found = {row.id: row for row in rows}
    skipped: dict[int, str] = {}
    candidates: list[AnyRow] = []
    for request_id in ids:
        row = found.get(request_id)
        if row is None:
            skipped[request_id] = NOT_FOUND
        elif row.user_id == actor.user_id:
            skipped[request_id] = OWN_REQUEST
        elif row.status != RequestStatus.PENDING:
            skipped[request_id] = SKIP_REASONS[row.status]
        else:
            candidates.append(row)

    if approving and has_pool and candidates:
        needed = sum(row.amount for row in candidates)
        await pool.check_pool(session, org=org, needed=needed, now=now)

    changed = await transitions.transition(
        session,
        ids=[row.id for row in candidates],
        to=to,
        now=now,
        decided_by_id=actor.user_id,
        note=note,
        within_teams=service.deciding_teams(actor),
        kind=DecisionKind.BULK,
    )
    decided = {row.id: row for row in changed}
    raced = [row.id for row in candidates if row.id not in decided]
    if raced:
        current = await repo.statuses(session, ids=raced)
        for request_id in raced:
            # Still pending means its requester moved out of the caller's teams meanwhile.
            skipped[request_id] = SKIP_REASONS.get(current.get(request_id, ""), NOT_FOUND)

    balances: dict[int, AnyRow] = {}
    if approving and changed:
        balances = await _grant(
            session, actor=actor, found=found, changed=changed, note=note, now=now
        )

    if changed:
        await transitions.insert_decision_audit(
            session,
            request_ids=[row.id for row in changed],
            organization_id=org_id,
            actor_id=actor.user_id,
            status=to,
            note=note,
            now=now,
        )
        await outbox.requests_decided(
            session, organization_id=org_id, request_ids=[row.id for row in changed], now=now
        )
    events.emit_bulk(
        session,
        actor=actor,
        to=to,
        note=note,
        now=now,
        org_id=org_id,
        found=found,
        changed=changed,
        balances=balances,
    )
    counted_decisions(session, kind="bulk", status=to.value, count=len(changed))
    return BulkOut(
        decided=[i for i in ids if i in decided],
        skipped=[Skipped(id=i, reason=skipped[i]) for i in ids if i in skipped],
    )


async def _grant(
    session: AsyncSession,
    *,
    actor: Actor,
    found: dict[int, AnyRow],
    changed: Sequence[AnyRow],
    note: str | None,
    now: datetime,
) -> dict[int, AnyRow]:
    """Credit every approved amount into its requester's current period."""
    await ledger.lock_in_user_order(session, {found[row.id].user_id for row in changed})
    due = sorted({found[row.id].user_id for row in changed if found[row.id].period_ended})
    # A period that had not ended at the classifying read cannot have ended since:
    # ``now`` is fixed and a rollover only moves the end forward.
    for chunk in repo.chunked(due):
        await ledger.rollover_due(session, now=now, user_ids=list(chunk))
    request_ids = [row.id for row in changed]
    balances = await ledger.grant_approved(
        session, request_ids=request_ids, actor_id=actor.user_id, note=note, now=now
    )
    # One request per user, so each grant moved its balance by at most MAX_TOKENS: past
    # the ceiling, but nowhere near overflowing. The whole batch is refused (and rolled
    # back with the request), as a single approval would be.
    over = sorted(row.user_id for row in balances if row.granted > BALANCE_CEILING)
    if over:
        raise InvalidInput(
            f"ids: approving would take user {over[0]}'s granted tokens this period past "
            f"{BALANCE_CEILING:,}",
            field="ids",
        )
    return {row.user_id: row for row in balances}
