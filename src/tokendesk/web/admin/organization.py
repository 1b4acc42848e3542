"""The active organization: the super admin's switcher."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from tokendesk.accounts import organizations
from tokendesk.accounts.auth import switched_session_cookie
from tokendesk.deps import DbSession
from tokendesk.web.admin.common import AdminPageActor, AdminRoute, optional_int
from tokendesk.web.pages import LoginRequired, signed_in_redirect

router = APIRouter(route_class=AdminRoute, include_in_schema=False)


def _local_path(value: str) -> str:
    if value.startswith("/admin") and not value.startswith("//"):
        return value
    return "/admin/requests"


@router.post("/admin/organization", response_model=None)
async def switch_organization(
    request: Request,
    session: DbSession,
    actor: AdminPageActor,
    organization_id: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/admin/requests",
) -> Response:
    """Re-issue the session cookie acting in another organization (super admins only).

    The service refuses anyone else and any organization that does not exist.
    """
    views = await organizations.list_organizations(session, actor=actor)
    wanted = optional_int(organization_id)
    if wanted not in {view.organization.id for view in views}:
        return RedirectResponse(_local_path(next), status_code=303)
    home = wanted == actor.home_organization_id
    cookie = switched_session_cookie(request, organization_id=None if home else wanted)
    if cookie is None:
        raise LoginRequired(request.url.path)
    # Object pages (a user, a team) belong to the old organization; land on the list instead.
    target = _local_path(next)
    parts = target.split("/")
    if len(parts) > 3:
        target = "/".join(parts[:3])
    return signed_in_redirect(request, target, cookie)
