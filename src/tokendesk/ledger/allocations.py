"""Which allocation a member's period opens with: override, team default, organization default."""

from __future__ import annotations

from typing import Any

from sqlalchemy import SQLColumnExpression, func, select

from tokendesk.accounts.models import Organization, Team, User
from tokendesk.ledger.models import (
    Balance,
)


def resolve_allocation(user: User, team: Team | None, org: Organization) -> int:
    """User override, else team default, else organization default."""
    if user.allocation_override is not None:
        return user.allocation_override
    if team is not None and team.default_allocation is not None:
        return team.default_allocation
    return org.default_allocation


def allocation_expression(org_default: int | SQLColumnExpression[int]) -> Any:
    """SQL form of :func:`resolve_allocation` for the balance row's user (set-based resets);
    ``org_default`` is the organization's default, or its column in the enclosing query."""
    return (
        select(func.coalesce(User.allocation_override, Team.default_allocation, org_default))
        .select_from(User)
        .outerjoin(Team, Team.id == User.team_id)
        .where(User.id == Balance.user_id)
        .scalar_subquery()
    )
