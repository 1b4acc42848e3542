"""Usage debited from balances: the balance side of a metering batch.

The statements are built once per dialect and run as Core on the session's
connection, as the rest of a batch is (see :mod:`tokendesk.metering.repository`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.models import Organization, User
from tokendesk.db import dialect_of, in_list, listed, run_core
from tokendesk.ledger.models import BALANCES, EntryKind, LedgerEntry, remaining_of
from tokendesk.metering.models import UsageEvent
from tokendesk.notifications.models import DEFAULT_THRESHOLDS, OrgNotificationSettings
from tokendesk.token_requests.models import ApprovalRule, RuleKind

_balances = BALANCES
_events = cast(Table, UsageEvent.__table__)
_users = cast(Table, User.__table__)
_organizations = cast(Table, Organization.__table__)
_entries = cast(Table, LedgerEntry.__table__)
_alert_settings = cast(Table, OrgNotificationSettings.__table__)
_rules = cast(Table, ApprovalRule.__table__)


@dataclass
class MemberBalance:
    """A user's balance row with the user's current team and the organization's time zone,
    and the organization's usage alerts: read with the row, so that telling whether a
    debit crossed one (``notifications.alerts``) costs no query of its own."""

    user_id: int
    organization_id: int
    period_start: datetime
    period_end: datetime
    allocation: int
    granted: int
    adjusted: int
    used: int
    reserved: int
    team_id: int | None
    timezone: str
    usage_thresholds: str = DEFAULT_THRESHOLDS
    email_enabled: bool = True
    # The organization's auto top-up, when on (``token_requests.top_ups``): read with
    # the row, so a debit that crosses nothing costs no query to tell so.
    top_up_rule_id: int | None = None
    top_up_trigger: int | None = None

    @property
    def remaining(self) -> int:
        return remaining_of(self.allocation, self.granted, self.adjusted, self.used, self.reserved)


@cache
def _member_balances(dialect: str) -> Any:
    b = _balances
    return (
        select(
            b.c.user_id,
            b.c.organization_id,
            b.c.period_start,
            b.c.period_end,
            b.c.allocation,
            b.c.granted,
            b.c.adjusted,
            b.c.used,
            b.c.reserved,
            _users.c.team_id,
            func.coalesce(_organizations.c.timezone, "UTC"),
            func.coalesce(_alert_settings.c.usage_thresholds, DEFAULT_THRESHOLDS),
            func.coalesce(_alert_settings.c.email_enabled, True),
            _rules.c.id,
            _rules.c.trigger_percent,
        )
        .join(_users, _users.c.id == b.c.user_id)
        .join(_organizations, _organizations.c.id == b.c.organization_id)
        .outerjoin(_alert_settings, _alert_settings.c.organization_id == b.c.organization_id)
        .outerjoin(
            _rules,
            and_(
                _rules.c.organization_id == b.c.organization_id,
                _rules.c.kind == RuleKind.TOP_UP.value,
                _rules.c.enabled.is_(True),
            ),
        )
        .where(in_list(dialect, b.c.user_id))
        .order_by(b.c.user_id)
        .with_for_update(of=b)
    )


@cache
def _usage_entries(dialect: str) -> Any:
    e = _events
    entry: dict[str, Any] = {
        "organization_id": e.c.organization_id,
        "user_id": e.c.user_id,
        "period_start": _balances.c.period_start,
        "kind": literal(EntryKind.USAGE.value),
        "amount": -e.c.total_tokens,
        "usage_event_id": e.c.id,
        "reason": e.c.model + " via " + e.c.source,
        "created_at": e.c.recorded_at,
    }
    source = (
        select(*entry.values())
        .join(_balances, _balances.c.user_id == e.c.user_id)
        .where(in_list(dialect, e.c.id))
    )
    return insert(_entries).from_select(list(entry), source)


@cache
def _add_used(dialect: str) -> Any:
    spent = (
        select(_events.c.user_id, func.sum(_events.c.total_tokens).label("tokens"))
        .where(in_list(dialect, _events.c.id))
        .group_by(_events.c.user_id)
        .subquery()
    )
    # Relative, not absolute, so it composes with concurrent holds on the same row.
    return (
        update(_balances)
        .where(_balances.c.user_id == spent.c.user_id)
        .values(used=_balances.c.used + spent.c.tokens, updated_at=bindparam("now"))
    )


async def lock_member_balances(
    session: AsyncSession, *, user_ids: Collection[int]
) -> dict[int, MemberBalance]:
    """Read and (on PostgreSQL) lock the balances, in user order so batches never deadlock.

    Plain rows, not ORM objects: a batch reads a hundred of them and changes them
    with one UPDATE, so identity-map bookkeeping would only cost time.
    """
    dialect = dialect_of(session)
    rows = await run_core(session, _member_balances(dialect), {"ids": listed(dialect, user_ids)})
    return {row[0]: MemberBalance(*row) for row in rows}


async def debit_usage(
    session: AsyncSession, *, usage_event_ids: Collection[int], now: datetime
) -> None:
    """Debit stored usage events from their users' current periods: a usage ledger entry
    for each event, and each user's ``used`` grown by the tokens of their events (one
    INSERT ... SELECT and one UPDATE for the whole batch)."""
    if usage_event_ids:
        dialect = dialect_of(session)
        ids = listed(dialect, usage_event_ids)
        await run_core(session, _usage_entries(dialect), {"ids": ids})
        await run_core(session, _add_used(dialect), {"ids": ids, "now": now})
