"""The admin center at ``/admin``: one router combining its sections.

Every route goes through :data:`~tokendesk.web.admin.common.AdminPageActor`, so
members get a 403 page, signed-out visitors the login page, and every POST
needs the session's CSRF token.
"""

from __future__ import annotations

from fastapi import APIRouter

from tokendesk.web.admin import (
    analytics,
    audit,
    bulk,
    organization,
    requests,
    settings,
    teams,
    users,
)

router = APIRouter(include_in_schema=False)
for section in (requests, bulk, users, teams, analytics, settings, audit, organization):
    router.include_router(section.router)
