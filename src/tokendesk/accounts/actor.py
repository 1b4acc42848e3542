"""Who is calling, and what they may see."""

from __future__ import annotations

from dataclasses import dataclass, field

from tokendesk.accounts.models import Role

ADMIN_ROLES = frozenset({Role.TEAM_OWNER, Role.ORG_ADMIN, Role.SUPER_ADMIN})


@dataclass(frozen=True)
class Actor:
    user_id: int
    email: str
    name: str
    role: Role
    # The organization this call acts in: the user's own, or the one a super admin chose.
    organization_id: int
    home_organization_id: int
    team_id: int | None
    owned_team_ids: frozenset[int] = field(default_factory=frozenset)
    # The browser session this call came with; None for an API key (or a job).
    session_id: str | None = None

    @property
    def is_super_admin(self) -> bool:
        return self.role == Role.SUPER_ADMIN

    @property
    def is_org_admin(self) -> bool:
        """Org admins and super admins: everything inside the active organization."""
        return self.role in (Role.ORG_ADMIN, Role.SUPER_ADMIN)

    @property
    def is_admin(self) -> bool:
        """May open the admin center (team owners included)."""
        return self.role in ADMIN_ROLES

    def can_manage_team(self, team_id: int | None) -> bool:
        """Org admins manage every team of the active organization; team owners the teams
        they own. ``team_id`` is a team of that organization (None: no team, nobody's)."""
        return self.is_org_admin or team_id in self.owned_team_ids
