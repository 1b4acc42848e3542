"""Usage metering: debit reported token usage from balances, exactly once per event id.

A batch is recorded with a fixed handful of statements whatever its size: the
balances are read (and locked on PostgreSQL) once, each event's resulting
balance is computed in Python in batch order, and events, ledger entries and
balances are each written with one set-based statement; :mod:`rollups` then
adds the new events to the analytics rollups in the same transaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.bounds import BALANCE_CEILING, MAX_EVENT_TOKENS, is_count
from tokendesk.db import utcnow
from tokendesk.errors import InvalidInput, NotFound
from tokendesk.events.bus import emit
from tokendesk.ledger import service as ledger
from tokendesk.ledger.models import Reservation
from tokendesk.ledger.periods import zone
from tokendesk.ledger.usage import MemberBalance
from tokendesk.metering import repository as repo
from tokendesk.metering import rollups
from tokendesk.notifications import alerts
from tokendesk.token_requests import top_ups

MAX_ID_LENGTH = 200
MAX_SOURCE_LENGTH = 50
# Clocks drift: a reporter slightly ahead of us is fine, an event from next week is a bug.
MAX_CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class UsageInput:
    event_id: str
    user_id: int
    model: str
    prompt_tokens: int
    completion_tokens: int
    occurred_at: datetime | None = None  # default now
    source: str = "api"
    # Tokens to debit; default prompt + completion (a model weight may change it).
    total_tokens: int | None = None
    # The gateway API the call was made on (chat, embeddings, ...); None when reported
    # through the usage API, which does not say.
    endpoint: str | None = None
    # Of prompt_tokens, those the upstream served from its prompt cache; of
    # completion_tokens, those spent reasoning. Recorded for analytics; the debit is
    # total_tokens, priced by whoever reports it.
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def debit(self) -> int:
        if self.total_tokens is not None:
            return self.total_tokens
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class UsageResult:
    event_id: str
    usage_event_id: int
    user_id: int
    total_tokens: int
    # The user's remaining balance right after this event (for a replay: the first result's).
    remaining: int
    replayed: bool


def _check(index: int, usage: UsageInput, now: datetime) -> None:
    """Raise InvalidInput naming ``events.<index>.<field>`` for the first bad field."""

    def bad(field: str, message: str) -> InvalidInput:
        name = f"events.{index}.{field}"
        return InvalidInput(f"{name}: {message}", field=name)

    if not isinstance(usage.event_id, str) or not 1 <= len(usage.event_id) <= MAX_ID_LENGTH:
        raise bad("event_id", f"must be 1 to {MAX_ID_LENGTH} characters")
    if not isinstance(usage.model, str) or not 1 <= len(usage.model) <= MAX_ID_LENGTH:
        raise bad("model", f"must be 1 to {MAX_ID_LENGTH} characters")
    if not isinstance(usage.source, str) or not 1 <= len(usage.source) <= MAX_SOURCE_LENGTH:
        raise bad("source", f"must be 1 to {MAX_SOURCE_LENGTH} characters")
    counts = f"must be a whole number from 0 to {MAX_EVENT_TOKENS:,}"
    for field in ("prompt_tokens", "completion_tokens"):
        if not is_count(getattr(usage, field), maximum=MAX_EVENT_TOKENS):
            raise bad(field, counts)
    for part, whole in (
        ("cached_tokens", "prompt_tokens"),
        ("reasoning_tokens", "completion_tokens"),
    ):
        if not is_count(getattr(usage, part), maximum=getattr(usage, whole)):
            raise bad(part, f"must be a whole number from 0 to {whole} ({getattr(usage, whole):,})")
    if usage.total_tokens is not None and not is_count(
        usage.total_tokens, maximum=MAX_EVENT_TOKENS
    ):
        raise bad("total_tokens", counts)
    if not is_count(usage.debit, maximum=MAX_EVENT_TOKENS):
        raise bad(
            "completion_tokens",
            f"prompt_tokens and completion_tokens together must be at most {MAX_EVENT_TOKENS:,}",
        )
    if usage.occurred_at is not None:
        if usage.occurred_at.tzinfo is None:
            raise bad("occurred_at", "must carry a time zone")
        if usage.occurred_at > now + MAX_CLOCK_SKEW:
            raise bad("occurred_at", "must not be more than 5 minutes in the future")


@dataclass
class _Plan:
    """What a batch will write, computed before anything is written."""

    # Index in the batch of each event's first occurrence, for events new to the database.
    fresh: dict[str, int]
    balance_after: dict[str, int]
    used: dict[int, int]


def _plan(
    events: Sequence[UsageInput], *, balances: dict[int, MemberBalance], known: set[str]
) -> _Plan:
    """Charge each new event in batch order, per user, from the user's current remaining."""
    remaining = {user_id: balance.remaining for user_id, balance in balances.items()}
    plan = _Plan(fresh={}, balance_after={}, used=defaultdict(int))
    for index, usage in enumerate(events):
        if usage.event_id in known or usage.event_id in plan.fresh:
            continue
        plan.fresh[usage.event_id] = index
        remaining[usage.user_id] -= usage.debit
        plan.balance_after[usage.event_id] = remaining[usage.user_id]
        plan.used[usage.user_id] += usage.debit
        # A cap per event does not bound a period's sum (a period holds any number of
        # events), so the sum has its own ceiling: past it the event is refused, the
        # one exception to "usage is always recorded" (see tokendesk.bounds).
        if balances[usage.user_id].used + plan.used[usage.user_id] > BALANCE_CEILING:
            name = f"events.{index}"
            raise InvalidInput(
                f"{name}: would take user {usage.user_id}'s used tokens this period past "
                f"{BALANCE_CEILING:,}",
                field=name,
            )
    return plan


def _check_members(
    organization_id: int, events: Sequence[UsageInput], balances: dict[int, MemberBalance]
) -> None:
    for index, usage in enumerate(events):
        balance = balances.get(usage.user_id)
        if balance is None or balance.organization_id != organization_id:
            name = f"events.{index}.user_id"
            raise InvalidInput(
                f"{name}: user {usage.user_id} not found in this organization", field=name
            )


async def record_usage(
    session: AsyncSession,
    *,
    organization_id: int,
    events: Sequence[UsageInput],
    now: datetime | None = None,
) -> list[UsageResult]:
    """Debit each event's tokens from its user's current period, once per event id.

    The whole batch is checked before anything is written. An event id already
    stored for the organization, or repeated inside the batch, is a replay: it
    charges nothing and returns the first result with ``replayed=True``. Usage
    that takes a balance below zero is still recorded (it already happened), so
    ``remaining`` may be negative.
    """
    if not events:
        return []
    now = now or utcnow()
    for index, usage in enumerate(events):
        _check(index, usage, now)
    # What follows is Core on the connection, which does not flush pending ORM changes
    # (a settled hold's reservation, say) by itself.
    await session.flush()
    user_ids = {usage.user_id for usage in events}
    balances = await ledger.lock_member_balances(session, user_ids=user_ids)
    _check_members(organization_id, events, balances)
    if any(balance.period_end <= now for balance in balances.values()):
        await ledger.rollover_due(session, now=now, user_ids=list(user_ids))
        balances = await ledger.lock_member_balances(session, user_ids=user_ids)
    # Optimistic: most events are new, so charge them all and let the insert say otherwise.
    plan = _plan(events, balances=balances, known=set())
    local = zone(next(iter(balances.values())).timezone)
    today = now.astimezone(local).date()
    rows = [
        _event_row(organization_id, events[i], balances, plan, now, local, today)
        for i in plan.fresh.values()
    ]
    inserted = await repo.insert_events(session, rows)
    stored: dict[str, repo.StoredEvent] = {}
    if len(inserted) < len(plan.fresh):
        # Some ids were recorded before (a retry, or a concurrent batch that just won):
        # they are replays, and the balances after the events that follow them shift.
        stored = await repo.stored_events(
            session,
            organization_id=organization_id,
            event_ids=plan.fresh.keys() - inserted.keys(),
        )
        planned = plan.balance_after
        plan = _plan(events, balances=balances, known=set(stored))
        await repo.fix_balance_after(
            session,
            {
                inserted[event_id]: after
                for event_id, after in plan.balance_after.items()
                if planned[event_id] != after
            },
        )
    days = {row["day"] for row in rows if row["event_id"] in inserted}
    await _write_effects(session, events, balances, plan, inserted, days, now)
    return _results(events, plan, inserted, stored)


def _event_row(
    organization_id: int,
    usage: UsageInput,
    balances: dict[int, MemberBalance],
    plan: _Plan,
    now: datetime,
    local: tzinfo,
    today: date,
) -> dict[str, Any]:
    occurred_at = usage.occurred_at or now
    return {
        "organization_id": organization_id,
        "event_id": usage.event_id,
        "user_id": usage.user_id,
        "team_id": balances[usage.user_id].team_id,
        "model": usage.model,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_tokens": usage.cached_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "total_tokens": usage.debit,
        "source": usage.source,
        "endpoint": usage.endpoint,
        "occurred_at": occurred_at,
        "day": today if usage.occurred_at is None else occurred_at.astimezone(local).date(),
        "recorded_at": now,
        "balance_after": plan.balance_after[usage.event_id],
    }


async def _write_effects(
    session: AsyncSession,
    events: Sequence[UsageInput],
    balances: dict[int, MemberBalance],
    plan: _Plan,
    inserted: dict[str, int],
    days: set[date],
    now: datetime,
) -> None:
    """Ledger entries, balance cache, daily rollups, the alerts of thresholds crossed and
    real-time events of the new events."""
    stored_now = list(inserted.values())
    # Before ``balances`` take the batch's usage below: they are the debit's "before".
    crossed = alerts.crossings(balances, plan.used, now=now)
    await ledger.debit_usage(session, usage_event_ids=stored_now, now=now)
    await rollups.add(session, usage_event_ids=stored_now, days=days)
    await alerts.queue_balance_alerts(session, crossed, now=now)
    for user_id, delta in plan.used.items():
        # The rows are locked (or SQLite's write lock is held), so this mirrors the UPDATE.
        balance = balances[user_id]
        balance.used += delta
        emit(session, ledger.balance_event(balance, cause="usage"))
    # After the usage's balance events, so the top-up's is the one a chat app keeps.
    await top_ups.after_usage(session, balances, plan.used, now=now)


def _results(
    events: Sequence[UsageInput],
    plan: _Plan,
    inserted: dict[str, int],
    stored: dict[str, repo.StoredEvent],
) -> list[UsageResult]:
    results: list[UsageResult] = []
    for index, usage in enumerate(events):
        first_index = plan.fresh.get(usage.event_id)
        if first_index is not None:
            # A repeat of an id new in this batch replays its first occurrence.
            first = events[first_index]
            results.append(
                UsageResult(
                    event_id=usage.event_id,
                    usage_event_id=inserted[usage.event_id],
                    user_id=first.user_id,
                    total_tokens=first.debit,
                    remaining=plan.balance_after[usage.event_id],
                    replayed=first_index != index,
                )
            )
        else:
            earlier = stored[usage.event_id]
            results.append(
                UsageResult(
                    event_id=usage.event_id,
                    usage_event_id=earlier.id,
                    user_id=earlier.user_id,
                    total_tokens=earlier.total_tokens,
                    remaining=earlier.balance_after,
                    replayed=True,
                )
            )
    return results


async def settle_and_record(
    session: AsyncSession, *, reservation_id: int, usage: UsageInput, organization_id: int
) -> UsageResult:
    """Close the gateway's hold and debit what the call actually used, in one transaction.

    The actual amount may exceed the hold (a reply longer than estimated): it is
    recorded all the same and shows as an overspend. Retrying with the same
    event id is harmless: the hold is already closed and the usage replays.
    """
    reservation = await session.get(Reservation, reservation_id)
    if reservation is None or reservation.organization_id != organization_id:
        raise NotFound(f"reservation {reservation_id} not found")
    if reservation.user_id != usage.user_id:
        raise InvalidInput(
            f"user_id: reservation {reservation_id} belongs to another user", field="user_id"
        )
    _check(0, usage, utcnow())
    await ledger.settle(session, reservation_id=reservation_id, actual=usage.debit)
    [result] = await record_usage(session, organization_id=organization_id, events=[usage])
    return result


async def resolve_users(
    session: AsyncSession,
    *,
    organization_id: int,
    refs: Sequence[tuple[str | None, int | None]],
) -> list[int]:
    """Turn each event's (user_email, user_id) into a user id of ``organization_id``.

    Ids are passed through (record_usage checks them); every unknown email is
    reported at once, each named by its place in the batch.
    """
    emails = {email.lower() for email, _ in refs if email is not None}
    known = await repo.user_ids_by_email(session, organization_id=organization_id, emails=emails)
    problems: list[str] = []
    user_ids: list[int] = []
    for index, (email, user_id) in enumerate(refs):
        if email is None:
            assert user_id is not None
            user_ids.append(user_id)
        elif email.lower() in known:
            user_ids.append(known[email.lower()])
        else:
            problems.append(f"events.{index}.user_email: no user {email!r} in this organization")
    if problems:
        field = problems[0].split(":", 1)[0]
        raise InvalidInput("; ".join(problems), field=field)
    return user_ids
