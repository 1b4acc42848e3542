"""Finding, linking and provisioning the people chat apps name (accounts.identities)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from tests.factories import World
from tokendesk.accounts import identities
from tokendesk.accounts.identities import NamedUser
from tokendesk.accounts.integrations import IntegrationRef, create_integration, ref_of
from tokendesk.accounts.keycache import KeyCache
from tokendesk.accounts.models import ExternalIdentity, IdentityPreset, User
from tokendesk.db import Database
from tokendesk.errors import Forbidden, InvalidInput


async def open_webui(database: Database, world: World) -> IntegrationRef:
    async with database.transaction() as s:
        row, _ = await create_integration(
            s, organization_id=world.org_id, name="Open WebUI", preset=IdentityPreset.OPEN_WEBUI
        )
        return ref_of(row)


async def count(database: Database, model: type, *where: object) -> int:
    async with database.transaction(write=False) as s:
        return int(await s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


class TestResolve:
    async def test_first_sight_of_a_known_email_links_it_and_later_the_id_alone_finds_them(
        self, database: Database, world: World
    ) -> None:
        app = await open_webui(database, world)
        async with database.transaction() as s:
            person = await identities.resolve(
                s, integration=app, named=NamedUser("uuid-1", world.alice.email, None)
            )
        assert person.user_id == world.alice.id
        async with database.transaction(write=False) as s:
            again = await identities.find(s, integration=app, named=NamedUser("uuid-1", None, None))
        assert again is not None
        assert again.user_id == world.alice.id

    async def test_an_unknown_id_without_an_email_is_refused_naming_the_header(
        self, database: Database, world: World
    ) -> None:
        app = await open_webui(database, world)
        async with database.transaction() as s:
            with pytest.raises(InvalidInput) as refused:
                await identities.resolve(s, integration=app, named=NamedUser("uuid-2", None, None))
        assert refused.value.field == "x-openwebui-user-email"
        assert await count(database, ExternalIdentity) == 0

    async def test_a_deactivated_person_is_refused_even_when_linked(
        self, database: Database, world: World
    ) -> None:
        app = await open_webui(database, world)
        async with database.transaction() as s:
            await identities.resolve(
                s, integration=app, named=NamedUser("uuid-3", world.bob.email, None)
            )
            bob = await s.get(User, world.bob.id)
            assert bob is not None
            bob.is_active = False
        async with database.transaction(write=False) as s:
            with pytest.raises(Forbidden, match="deactivated"):
                await identities.find(s, integration=app, named=NamedUser("uuid-3", None, None))


class TestConcurrentFirstCalls:
    async def test_instances_racing_to_provision_one_person_create_one_user(
        self, database: Database, world: World
    ) -> None:
        """Several server instances (a key cache each, each on its own connections) see
        one new person's first calls at the same moment."""
        app = await open_webui(database, world)
        named = NamedUser("uuid-race", "race@corp.local", "Race")
        caches = [KeyCache(database, ttl_seconds=5) for _ in range(6)]
        try:
            owners = await asyncio.wait_for(
                asyncio.gather(*(cache.named_member(app, named) for cache in caches)), 30
            )
        finally:
            for cache in caches:
                await cache.stop()
        assert len({owner.user_id for owner in owners}) == 1
        assert await count(database, User, User.email == "race@corp.local") == 1
        assert (
            await count(database, ExternalIdentity, ExternalIdentity.external_id == "uuid-race")
            == 1
        )
