"""Who pays for a gateway call: a personal key's owner (or, for an admin's proxy, the
member it names), the person an integration's chat app names, or the member signed in
to the chat page. Every refusal is a :class:`GatewayError`, rendered in the error shape
of the API called."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse

from tokendesk.accounts.auth import actor_from_session_cookie, bearer_key, csrf_refused
from tokendesk.accounts.integrations import IntegrationRef, is_integration_key
from tokendesk.accounts.keycache import KeyOwner
from tokendesk.accounts.models import Role
from tokendesk.errors import AppError, InvalidInput
from tokendesk.gateway.dialects import ErrorShape, openai_error
from tokendesk.gateway.identity import IdentityError, named_user

if TYPE_CHECKING:
    from tokendesk.gateway.routes import Gateway


class GatewayError(Exception):
    """A refusal, in OpenAI's terms (``type_``, ``code``, ``param``); :meth:`render`
    shapes it for the API called."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type_ = type_
        self.code = code
        self.param = param

    def render(self, shape: ErrorShape = openai_error) -> JSONResponse:
        return shape(self.status, self.message, type_=self.type_, code=self.code, param=self.param)

    @property
    def response(self) -> JSONResponse:
        return self.render()


async def find_caller(
    request: Request,
    gateway: Gateway,
    body: Any = None,
    *,
    key_of: Callable[[Request], str | None] = bearer_key,
) -> KeyOwner:
    """Who pays for this call: the owner of the key ``key_of`` finds, the person an
    integration's chat app names (``body`` is the parsed request body, where LibreChat
    names them), or the member signed in to the chat page."""
    key = key_of(request)
    if key is None:
        return await session_caller(request, gateway)
    if is_integration_key(key):
        return await named_caller(request, gateway, key, body)
    owner = await gateway.keys.owner_of_key(key)
    if owner is None:
        raise invalid_key()
    header = gateway.settings.trusted_user_header
    on_behalf = request.headers.get(header) if header else None
    if not on_behalf:
        return owner
    # Only a proxy holding an admin's key may speak for someone else, and only where the
    # operator turned that on: an integration key is the way for chat apps.
    if owner.role not in (Role.ORG_ADMIN, Role.SUPER_ADMIN):
        raise GatewayError(403, f"{header} needs an org admin's key", type_="permission_error")
    member = await gateway.keys.member(organization_id=owner.organization_id, email=on_behalf)
    if member is None:
        raise GatewayError(403, f"unknown user {on_behalf!r} in {header}", type_="permission_error")
    return member


def invalid_key() -> GatewayError:
    return GatewayError(
        401, "invalid or revoked API key", type_="invalid_request_error", code="invalid_api_key"
    )


async def integration_of(gateway: Gateway, key: str) -> IntegrationRef:
    integration = await gateway.keys.integration_of_key(key)
    if integration is None:
        raise invalid_key()
    gateway.keys.note_integration_used(integration.id)
    return integration


async def named_caller(request: Request, gateway: Gateway, key: str, body: Any) -> KeyOwner:
    integration = await integration_of(gateway, key)
    try:
        named = named_user(integration, request.headers, body)
    except IdentityError as exc:
        type_ = "invalid_request_error" if exc.status == 400 else "permission_error"
        raise GatewayError(exc.status, exc.message, type_=type_, param=exc.param) from None
    try:
        return await gateway.keys.named_member(integration, named)
    except InvalidInput as exc:
        # OpenAI's clients know a bad request as a 400 naming its parameter.
        raise GatewayError(
            400, exc.message, type_="invalid_request_error", param=exc.field
        ) from None
    except AppError as exc:
        raise GatewayError(exc.status_code, exc.message, type_="permission_error") from None


async def session_caller(request: Request, gateway: Gateway) -> KeyOwner:
    """A member of the web app, signed in by cookie (the chat page)."""
    async with gateway.database.transaction(write=False) as session:
        actor = await actor_from_session_cookie(session, request)
    if actor is None:
        raise GatewayError(
            401,
            "send 'Authorization: Bearer <your tokendesk API key>'",
            type_="invalid_request_error",
            code="invalid_api_key",
        )
    if csrf_refused(request, request.headers.get("x-csrf-token")):
        raise GatewayError(403, "missing or invalid CSRF token", type_="permission_error")
    return KeyOwner(actor.user_id, actor.home_organization_id, actor.role, actor.email)


def names_someone(integration: IntegrationRef, request: Request) -> bool:
    spelling = integration.spelling
    headers = request.headers
    return any(headers.get(name) for name in (*spelling.user_id, *spelling.email, *spelling.jwt))
