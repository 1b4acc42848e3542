"""FastAPI dependencies shared by every domain: the request's transaction and the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import BackgroundTasks, Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.actor import Actor
from tokendesk.accounts.auth import (
    actor_from_api_key,
    actor_from_session_cookie,
    bearer_key,
    csrf_refused,
    settings_of,
)
from tokendesk.accounts.integrations import is_integration_key
from tokendesk.accounts.passwords import NewPassword
from tokendesk.accounts.schemas import UserUpdate
from tokendesk.accounts.users import prepare_password
from tokendesk.config import Settings
from tokendesk.db import AfterCommit, Database
from tokendesk.errors import AppError, Forbidden, Unauthorized
from tokendesk.runtime import Runtime

AppSettings = Annotated[Settings, Depends(settings_of)]


def runtime_of(request: Request) -> Runtime:
    """The process's runtime, built in the app's lifespan (see :mod:`tokendesk.runtime`)."""
    runtime: Runtime = request.app.state.runtime
    return runtime


def database_of(request: Request) -> Database:
    return runtime_of(request).database


AppRuntime = Annotated[Runtime, Depends(runtime_of)]


async def _write_session(request: Request) -> AsyncIterator[AsyncSession]:
    # The request owns the transaction: commit when the endpoint returns, roll back on error.
    async with database_of(request).transaction(write=True) as session:
        yield session


async def _read_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with database_of(request).transaction(write=False) as session:
        yield session


DbSession = Annotated[AsyncSession, Depends(_write_session, scope="function")]
ReadSession = Annotated[AsyncSession, Depends(_read_session, scope="function")]


async def _current_actor(request: Request, session: DbSession) -> Actor:
    return await _authenticate(request, session, session_writes=True)


async def _current_reader(
    request: Request, session: ReadSession, background: BackgroundTasks
) -> Actor:
    # A GET never waits for the writer: a due "last used" stamp of its key is written
    # once the response has been sent.
    return await _authenticate(request, session, session_writes=False, defer=background.add_task)


async def _authenticate(
    request: Request,
    session: AsyncSession,
    *,
    session_writes: bool,
    defer: Callable[[AfterCommit], None] | None = None,
) -> Actor:
    org_header = request.headers.get("x-organization-id")
    key = bearer_key(request)
    actor: Actor | None = None
    if key is not None:
        if is_integration_key(key):
            raise Forbidden(
                "this is an integration key: it calls the gateway (/v1) on behalf of a chat "
                "app's users and opens neither the REST API nor the admin center"
            )
        actor = await actor_from_api_key(
            session,
            key,
            organization_header=org_header,
            stamp_later=None if session_writes else database_of(request),
            defer=defer,
        )
        if actor is None:
            raise Unauthorized("invalid or revoked API key")
    else:
        actor = await actor_from_session_cookie(session, request, organization_header=org_header)
        if actor is not None and csrf_refused(request, request.headers.get("x-csrf-token")):
            raise Forbidden("missing or invalid CSRF token (send X-CSRF-Token)")
    if actor is None:
        raise Unauthorized("authentication required: send 'Authorization: Bearer <api key>'")
    request.state.actor = actor
    return actor


CurrentActor = Annotated[Actor, Depends(_current_actor)]
# For GET routes: the caller, found in the request's read transaction (ReadSession).
CurrentReader = Annotated[Actor, Depends(_current_reader)]


async def reauthenticate(request: Request) -> Actor | None:
    """The request's caller as of now, in a short read transaction of its own, or None
    when its credentials no longer hold (a long-lived stream asks again after a change)."""
    async with database_of(request).transaction(write=False) as session:
        try:
            return await _authenticate(request, session, session_writes=False)
        except AppError:
            return None


async def _admin_actor(actor: CurrentActor) -> Actor:
    return _admin(actor)


async def _org_admin_actor(actor: CurrentActor) -> Actor:
    return _org_admin(actor)


async def _admin_reader(actor: CurrentReader) -> Actor:
    return _admin(actor)


async def _org_admin_reader(actor: CurrentReader) -> Actor:
    return _org_admin(actor)


def _admin(actor: Actor) -> Actor:
    if not actor.is_admin:
        raise Forbidden("this needs a team owner, org admin or super admin")
    return actor


def _org_admin(actor: Actor) -> Actor:
    if not actor.is_org_admin:
        raise Forbidden("this needs an org admin or super admin")
    return actor


async def _reading_actor(request: Request) -> Actor:
    # A transaction of its own, over before the endpoint runs: the request then holds
    # no connection while it waits for the one that writes, or for the password hasher.
    async with database_of(request).transaction(write=False) as session:
        return await _authenticate(request, session, session_writes=False)


async def _org_admin_reading(request: Request) -> Actor:
    return _org_admin(await _reading_actor(request))


def client_address(request: Request) -> str:
    """Where the request came from (behind a trusted proxy, the client it names)."""
    return request.client.host if request.client else "unknown"


async def prepared_password(
    request: Request, *, actor: Actor, user_id: int, data: UserUpdate
) -> NewPassword | None:
    """``users.prepare_password`` with the sign-in limiter and this client's address, so
    guesses at the current password count where guesses at sign-in do."""
    runtime = runtime_of(request)
    return await prepare_password(
        runtime.database,
        actor=actor,
        user_id=user_id,
        data=data,
        guesses=runtime.login_limiter,
        address=client_address(request),
    )


AdminActor = Annotated[Actor, Depends(_admin_actor)]
# For endpoints that open their write transaction themselves, after slow work.
ReadingActor = Annotated[Actor, Depends(_reading_actor)]
OrgAdminActor = Annotated[Actor, Depends(_org_admin_actor)]
# CurrentReader that must be an admin, or an org admin (GET routes).
AdminReader = Annotated[Actor, Depends(_admin_reader)]
OrgAdminReader = Annotated[Actor, Depends(_org_admin_reader)]
# For endpoints that write in transactions of their own (usage ingest's group commits):
# the caller is found in a short read transaction, so the request holds no write
# lock, and no connection, while it waits for the writer.
OrgAdminReadingActor = Annotated[Actor, Depends(_org_admin_reading)]
