"""Turning credentials (API key or session cookie) into an :class:`Actor`."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Collection
from datetime import timedelta
from functools import partial
from typing import Any, Protocol

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import bindparam, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.actor import Actor
from tokendesk.accounts.lookups import get_organization
from tokendesk.accounts.models import (
    ApiKey,
    LoginSession,
    Role,
    TeamOwner,
    User,
)
from tokendesk.accounts.security import hash_api_key, usable_key
from tokendesk.bounds import parse_id
from tokendesk.config import Settings
from tokendesk.db import AfterCommit, Database, after_commit, utcnow
from tokendesk.errors import NotFound

SESSION_COOKIE = "tokendesk_session"
LAST_USED_RESOLUTION = timedelta(minutes=1)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def bearer_key(request: Request) -> str | None:
    """The API key of an ``Authorization: Bearer`` header; None without one, and then
    the session cookie is the request's credential (the REST API and the gateway alike)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if token and scheme.lower() == "bearer" else None


def csrf_refused(request: Request, submitted: str | None) -> bool:
    """Whether a request signed in by its session cookie changes state without proof of
    intent: cookies ride along by themselves, so a change must carry the session's CSRF
    token (``submitted``: the X-CSRF-Token header, or a form's field)."""
    return request.method not in SAFE_METHODS and not csrf_ok(request, submitted)


def settings_of(request: Request) -> Settings:
    """The settings the app was built with (cookies are signed with its secret)."""
    settings: Settings = request.app.state.settings
    return settings


def session_serializer(settings: Settings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(settings.secret_key, salt="tokendesk-session")


class Person(Protocol):
    """What an actor is built from: a ``User``, or a row of its columns."""

    @property
    def id(self) -> int: ...
    @property
    def email(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def organization_id(self) -> int: ...
    @property
    def team_id(self) -> int | None: ...


async def build_actor(
    session: AsyncSession,
    user: Person,
    *,
    organization_id: int | None = None,
    owned_team_ids: frozenset[int] | None = None,
    session_id: str | None = None,
) -> Actor:
    """``owned_team_ids`` when the caller already read them, else they are looked up;
    ``session_id`` when the caller signed in with a browser session."""
    if owned_team_ids is None:
        owned = await session.scalars(select(TeamOwner.team_id).where(TeamOwner.user_id == user.id))
        owned_team_ids = frozenset(owned.all())
    active_org = user.organization_id
    if organization_id is not None and organization_id != user.organization_id:
        if user.role != Role.SUPER_ADMIN:
            raise NotFound(f"organization {organization_id} not found")
        await get_organization(session, organization_id)
        active_org = organization_id
    return Actor(
        user_id=user.id,
        email=user.email,
        name=user.name,
        role=Role(user.role),
        organization_id=active_org,
        home_organization_id=user.organization_id,
        team_id=user.team_id,
        owned_team_ids=owned_team_ids,
        session_id=session_id,
    )


def _parse_org(header: str | None) -> int | None:
    if header is None or header == "":
        return None
    organization_id = parse_id(header)
    if organization_id is None:
        raise NotFound(f"organization {header!r} not found")
    return organization_id


# Every API call starts here: one statement of plain columns, the owned teams joined
# in (a row per team, usually one), rather than ORM objects and a second query. Built
# once: building it per call cost more than running it.
_KEY_OWNER = (
    select(
        User.id,
        User.email,
        User.name,
        User.role,
        User.organization_id,
        User.team_id,
        ApiKey.id.label("key_id"),
        ApiKey.last_used_at,
        TeamOwner.team_id.label("owned_team_id"),
    )
    .join(ApiKey, ApiKey.user_id == User.id)
    .outerjoin(TeamOwner, TeamOwner.user_id == User.id)
    .where(*usable_key(bindparam("key_hash")))
)


async def actor_from_api_key(
    session: AsyncSession,
    key: str,
    *,
    organization_header: str | None = None,
    stamp_later: Database | None = None,
    defer: Callable[[AfterCommit], None] | None = None,
) -> Actor | None:
    """The key's owner as an actor. With ``stamp_later``, ``session`` only reads, so a
    due "last used" stamp goes in a short transaction of that database once the
    session has ended (never two connections at once for one request), or when
    ``defer`` runs what it is given."""
    rows = (await session.execute(_KEY_OWNER, {"key_hash": hash_api_key(key)})).all()
    if not rows:
        return None
    person = rows[0]
    now = utcnow()
    # "Last used" is for people, to the minute: writing it on every call would make
    # every read a write, and on SQLite every write waits for the one writer.
    if person.last_used_at is None or now - person.last_used_at > LAST_USED_RESOLUTION:
        stamp = update(ApiKey).where(ApiKey.id == person.key_id).values(last_used_at=now)
        if stamp_later is None:
            await session.execute(stamp)
        else:
            database = stamp_later

            async def stamp_alone() -> None:
                async with database.transaction() as stamping:
                    await stamping.execute(stamp)

            (defer or partial(after_commit, session))(stamp_alone)
    owned = frozenset(row.owned_team_id for row in rows if row.owned_team_id is not None)
    return await build_actor(
        session, person, organization_id=_parse_org(organization_header), owned_team_ids=owned
    )


def csrf_token_for(settings: Settings, session_id: str) -> str:
    """The CSRF token bound to one login session (sent back in forms and X-CSRF-Token)."""
    digest = hmac.new(settings.secret_key.encode(), f"csrf:{session_id}".encode(), hashlib.sha256)
    return digest.hexdigest()


def session_lifetime(settings: Settings) -> timedelta:
    return timedelta(hours=settings.session_hours)


def _row_id(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _cookie(settings: Settings, user_id: int, session_id: str, organization_id: int | None) -> str:
    payload: dict[str, Any] = {"uid": user_id, "sid": session_id}
    if organization_id is not None:
        payload["org"] = organization_id
    return session_serializer(settings).dumps(payload)


async def open_login_session(
    session: AsyncSession, *, settings: Settings, user: User, via: str
) -> str:
    """Record a fresh browser session for ``user``, signed in ``via`` a password or an
    identity provider (its source, ``oidc:<name>``); return its cookie value.

    The user's sessions that have expired are deleted on the way, so the table holds
    no more than the sessions people really have open.
    """
    now = utcnow()
    await session.execute(
        delete(LoginSession).where(LoginSession.user_id == user.id, LoginSession.expires_at <= now)
    )
    session_id = secrets.token_urlsafe(32)
    session.add(
        LoginSession(
            id=_row_id(session_id),
            user_id=user.id,
            created_at=now,
            expires_at=now + session_lifetime(settings),
            via=via,
        )
    )
    user.last_sign_in_at, user.last_sign_in_via = now, via
    await session.flush()
    return _cookie(settings, user.id, session_id, None)


def switched_session_cookie(request: Request, *, organization_id: int | None) -> str | None:
    """The caller's cookie for the same session, acting in ``organization_id``."""
    data = read_session_cookie(request)
    if data is None:
        return None
    return _cookie(
        settings_of(request), int(data.get("uid", 0)), str(data.get("sid", "")), organization_id
    )


def secure_cookies(request: Request) -> bool:
    """Whether cookies may travel only over https: the public URL says so, or this
    request came over https."""
    return bool(settings_of(request).secure_cookies) or request.url.scheme == "https"


def set_session_cookie(response: Response, request: Request, cookie: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=int(session_lifetime(settings_of(request)).total_seconds()),
        httponly=True,
        samesite="lax",
        secure=secure_cookies(request),
        path="/",
    )


def read_session_cookie(request: Request) -> dict[str, Any] | None:
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw:
        return None
    try:
        settings = settings_of(request)
        data = session_serializer(settings).loads(
            raw, max_age=int(session_lifetime(settings).total_seconds())
        )
    except BadSignature:
        return None
    return data if isinstance(data, dict) else None


def csrf_ok(request: Request, submitted: str | None) -> bool:
    data = read_session_cookie(request)
    if data is None or not submitted:
        return False
    token = csrf_token_for(settings_of(request), str(data.get("sid", "")))
    return hmac.compare_digest(token, submitted)


async def end_login_session(session: AsyncSession, request: Request) -> int | None:
    """Sign this browser out: its cookie is refused from now on, even if kept.
    The user whose session it was, if it was open."""
    data = read_session_cookie(request)
    if data is None:
        return None
    row = _row_id(str(data.get("sid", "")))
    ended = await session.scalar(
        delete(LoginSession).where(LoginSession.id == row).returning(LoginSession.user_id)
    )
    return None if ended is None else int(ended)


async def end_every_session(
    session: AsyncSession, *, user_id: int, keep_session_id: str | None = None
) -> int:
    """End the user's browser sessions (all, or all but ``keep_session_id``); how many."""
    query = delete(LoginSession).where(LoginSession.user_id == user_id)
    if keep_session_id is not None:
        query = query.where(LoginSession.id != _row_id(keep_session_id))
    result = await session.execute(query)
    return int(getattr(result, "rowcount", 0) or 0)


async def end_password_sessions(
    session: AsyncSession, *, organization_id: int, keep_roles: Collection[str]
) -> list[int]:
    """End the browser sessions opened with a password by the organization's people
    whose role is not in ``keep_roles``; the users whose sessions ended."""
    ended = (
        await session.execute(
            delete(LoginSession)
            .where(
                or_(LoginSession.via == "password", LoginSession.via.is_(None)),
                LoginSession.user_id.in_(
                    select(User.id).where(
                        User.organization_id == organization_id, User.role.not_in(keep_roles)
                    )
                ),
            )
            .returning(LoginSession.user_id)
        )
    ).scalars()
    return sorted(set(ended))


async def actor_from_session_cookie(
    session: AsyncSession, request: Request, *, organization_header: str | None = None
) -> Actor | None:
    """The signed-in person, if the cookie names a session that is still open."""
    data = read_session_cookie(request)
    if data is None:
        return None
    session_id = str(data.get("sid", ""))
    user = await session.scalar(
        select(User)
        .join(LoginSession, LoginSession.user_id == User.id)
        .where(
            LoginSession.id == _row_id(session_id),
            LoginSession.expires_at > utcnow(),
            User.id == int(data.get("uid", 0)),
            User.is_active.is_(True),
        )
    )
    if user is None:
        return None
    org = _parse_org(organization_header) or data.get("org")
    return await build_actor(session, user, organization_id=org, session_id=session_id)
