"""How each person gets in, for the admin center: a password, an identity provider
(single sign-on), a chat app that names them through an integration; and when each
was last used."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts.models import (
    INTEGRATION_SOURCE,
    PROVIDER_SOURCE,
    ExternalIdentity,
    Integration,
    User,
)


@dataclass(frozen=True)
class SignInWay:
    kind: str  # "password", "provider" or "chat app"
    label: str
    last_at: datetime | None
    # The provider's subject or the chat app's user id; None for a password.
    external_id: str | None = None


async def sign_in_ways(
    session: AsyncSession, users: Collection[User], *, provider_labels: Mapping[str, str]
) -> dict[int, list[SignInWay]]:
    """Each user's ways in, by user id: the password first, then providers and chat
    apps by name. ``provider_labels`` maps a provider's source (``oidc:<name>``) to
    the label on its button; a provider no longer configured shows by its name."""
    ways: dict[int, list[SignInWay]] = {user.id: [] for user in users}
    for user in users:
        if user.password_hash is not None:
            last = user.last_sign_in_at if user.last_sign_in_via == "password" else None
            ways[user.id].append(SignInWay("password", "Password", last))
    if not ways:
        return ways
    identities = (
        await session.execute(
            select(
                ExternalIdentity.user_id,
                ExternalIdentity.source,
                ExternalIdentity.external_id,
                ExternalIdentity.last_seen_at,
            ).where(ExternalIdentity.user_id.in_(list(ways)))
        )
    ).all()
    integration_ids = {
        int(suffix)
        for _, source, _, _ in identities
        if (suffix := source.removeprefix(INTEGRATION_SOURCE)) != source and suffix.isdecimal()
    }
    names: dict[int, str] = {}
    if integration_ids:
        rows = await session.execute(
            select(Integration.id, Integration.name).where(Integration.id.in_(integration_ids))
        )
        names = {integration_id: name for integration_id, name in rows.all()}
    found: list[tuple[int, SignInWay]] = []
    for user_id, source, external_id, last_seen in identities:
        if source.startswith(PROVIDER_SOURCE):
            label = provider_labels.get(source, source.removeprefix(PROVIDER_SOURCE))
            found.append((user_id, SignInWay("provider", label, last_seen, external_id)))
        elif source.startswith(INTEGRATION_SOURCE):
            suffix = source.removeprefix(INTEGRATION_SOURCE)
            label = names.get(int(suffix), "a removed chat app") if suffix.isdecimal() else source
            found.append((user_id, SignInWay("chat app", label, last_seen, external_id)))
    for user_id, way in sorted(found, key=lambda item: (item[1].kind != "provider", item[1].label)):
        ways[user_id].append(way)
    return ways


def last_seen(ways: list[SignInWay]) -> datetime | None:
    """The latest use of any of the ways."""
    return max((way.last_at for way in ways if way.last_at is not None), default=None)
