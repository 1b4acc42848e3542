"""The persistent sidebar: pending badge, the active organization, the switcher."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts import organizations
from tokendesk.accounts.actor import Actor
from tokendesk.accounts.lookups import get_organization
from tokendesk.token_requests import service as token_requests

SECTIONS = (
    ("requests", "/admin/requests", "Token Requests"),
    ("users", "/admin/users", "Users"),
    ("teams", "/admin/teams", "Teams"),
    ("integrations", "/admin/integrations", "Integrations"),
    ("analytics", "/admin/analytics", "Analytics"),
    ("settings", "/admin/settings", "Settings"),
    ("audit", "/admin/audit", "Audit log"),
)

# Sections only org admins (and super admins) can use: team owners are not shown them.
ORG_ADMIN_SECTIONS = frozenset({"integrations"})

ROLE_LABELS = {
    "member": "Member",
    "team_owner": "Team owner",
    "org_admin": "Org admin",
    "super_admin": "Super admin",
}


async def sidebar_context(session: AsyncSession, actor: Actor) -> dict[str, Any]:
    org = await get_organization(session, actor.organization_id)
    switchable: list[tuple[int, str]] = []
    if actor.is_super_admin:
        views = await organizations.list_organizations(session, actor=actor)
        switchable = [(view.organization.id, view.organization.name) for view in views]
    return {
        "organization": org,
        "tz": org.timezone,
        "pending_count": await token_requests.pending_count(session, actor=actor),
        "sections": [
            section
            for section in SECTIONS
            if actor.is_org_admin or section[0] not in ORG_ADMIN_SECTIONS
        ],
        "switchable_organizations": switchable,
        "role_label": ROLE_LABELS.get(actor.role.value, actor.role.value),
    }
