"""Who a chat app says is calling: the user an integration names in its headers or body.

Each preset knows where its chat app puts the user: Open WebUI's forwarded
``X-OpenWebUI-User-*`` headers (and the ``X-Open-WebUI-*`` spelling of its docs, or
the signed ``X-OpenWebUI-User-Jwt`` when it has a secret), LibreChat's body ``user``
and the headers an operator adds with its placeholders, or a generic set. An
integration may rename any header. Everything read here is bounded: a chat app's
values end up in the user directory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import jwt

from tokendesk.accounts.emails import BadEmail, normalize_email
from tokendesk.accounts.identities import MAX_EXTERNAL_ID, MAX_NAME, NamedUser
from tokendesk.accounts.integrations import IntegrationRef

# Open WebUI signs its identity for 300 s by default; a little leeway absorbs clock skew.
JWT_LEEWAY_SECONDS = 30
# Printable, no spaces: ids are keys, not prose.
_EXTERNAL_ID = re.compile(r"[\x21-\x7e]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class IdentityError(Exception):
    """The chat app's naming of its user cannot be used: ``status`` and a message that
    says which header or field to fix."""

    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def _first(headers: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        value = headers.get(name)
        if value is not None and value.strip():
            return name, value.strip()
    return None


def _external_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise IdentityError(400, f"{where}: must be a non-empty string", param=where)
    value = value.strip()
    if len(value) > MAX_EXTERNAL_ID or not _EXTERNAL_ID.fullmatch(value):
        raise IdentityError(
            400,
            f"{where}: a user id of at most {MAX_EXTERNAL_ID} printable characters "
            "without spaces is expected",
            param=where,
        )
    return value


def _email(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise IdentityError(400, f"{where}: must be a string", param=where)
    try:
        return normalize_email(value)
    except BadEmail as exc:
        shown = value.strip()[:80]
        raise IdentityError(
            400, f"{where}: {shown!r} is not an email address ({exc})", param=where
        ) from None


def _name(value: Any, where: str, *, decode: bool) -> str | None:
    if not isinstance(value, str):
        return None
    text = unquote(value) if decode else value
    text = _CONTROL.sub("", text).strip()
    return text[:MAX_NAME] or None


def named_user(
    integration: IntegrationRef, headers: Mapping[str, str], body: Any = None
) -> NamedUser:
    """The user the call names, per the integration's spelling; raises
    :class:`IdentityError` when it names nobody or names them unusably.

    ``headers`` must look up case-insensitively (Starlette's do).
    """
    spelling = integration.spelling
    token = _first(headers, spelling.jwt) if spelling.jwt else None
    if integration.jwt_secret:
        if token is None:
            # A secret means only a signed identity counts: plain headers are what a
            # compromised or misconfigured sender could write for anyone.
            raise IdentityError(
                400,
                f"{spelling.jwt[0]}: this integration accepts only Open WebUI's signed "
                "identity; set FORWARD_USER_INFO_HEADER_JWT_SECRET in Open WebUI to the "
                "integration's JWT secret",
                param=spelling.jwt[0],
            )
        return _from_jwt(token[0], token[1], integration.jwt_secret)
    if token is not None:
        raise IdentityError(
            400,
            f"{token[0]}: this integration has no JWT secret to verify it with; give the "
            "integration Open WebUI's FORWARD_USER_INFO_HEADER_JWT_SECRET",
            param=token[0],
        )
    external_id = email = name = None
    if (found := _first(headers, spelling.user_id)) is not None:
        external_id = _external_id(found[1], found[0])
    elif spelling.body_user and isinstance(body, dict) and body.get("user") is not None:
        external_id = _external_id(body.get("user"), "user")
    if (found := _first(headers, spelling.email)) is not None:
        email = _email(found[1], found[0])
    if (found := _first(headers, spelling.name)) is not None:
        # Open WebUI URL-encodes names (they may hold any character, headers may not).
        name = _name(found[1], found[0], decode=True)
    if external_id is None and email is None:
        where = [*spelling.user_id[:1], *spelling.email[:1]]
        if spelling.body_user:
            where.append("the body's 'user'")
        raise IdentityError(
            400,
            "this is an integration key: every call must name the chat app's user "
            f"({' or '.join(where)}); nobody's balance pays for an unnamed call",
            param=spelling.user_id[0],
        )
    return NamedUser(external_id=external_id, email=email, name=name)


def _from_jwt(header: str, token: str, secret: str) -> NamedUser:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            options={"require": ["sub", "exp"]},
            leeway=JWT_LEEWAY_SECONDS,
        )
    except jwt.ExpiredSignatureError:
        raise IdentityError(403, f"{header}: the signed identity has expired") from None
    except jwt.InvalidTokenError as exc:
        raise IdentityError(403, f"{header}: the signed identity does not verify ({exc})") from None
    external_id = _external_id(claims.get("sub"), f"{header} sub")
    email = _email(claims["email"], f"{header} email") if claims.get("email") else None
    name = _name(claims.get("name"), f"{header} name", decode=False)
    return NamedUser(external_id=external_id, email=email, name=name)
