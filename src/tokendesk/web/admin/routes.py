"""The admin center at ``/admin``: one router combining its sections.

Every route goes through :data:`~tokendesk.web.admin.common.AdminPageActor`, so
members get a 403 page, signed-out visitors the login page, and every POST
needs the session's CSRF token.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from tokendesk.web.admin import (
    analytics,
    audit,
    bulk,
    integrations,
    notifications,
    organization,
    person,
    requests,
    rules,
    settings,
    teams,
    top_up,
    users,
)
from tokendesk.web.admin.common import submitted_csrf

router = APIRouter(include_in_schema=False)
for section in (
    requests,
    bulk,
    users,
    person,
    teams,
    integrations,
    analytics,
    settings,
    rules,
    top_up,
    notifications,
    audit,
    organization,
):
    # Ahead of every other dependency (a route's own session among them): the form is
    # read before any transaction begins.
    router.include_router(section.router, dependencies=[Depends(submitted_csrf)])
