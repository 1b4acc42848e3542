from __future__ import annotations

from tests.factories import World
from tokendesk.audit import service as audit
from tokendesk.db import Database


async def record(database: Database, *, organization_id: int, actor_id: int) -> list[str]:
    async with database.transaction() as s:
        await audit.record(
            s,
            organization_id=organization_id,
            actor_id=actor_id,
            action="user.updated",
            target_type="user",
            target_id=1,
        )
    async with database.transaction(write=False) as s:
        return await audit.check_references(s)


class TestCheckReferences:
    async def test_rows_naming_existing_organizations_and_actors_are_clean(
        self, database: Database, world: World
    ) -> None:
        assert await record(database, organization_id=world.org_id, actor_id=world.admin.id) == []

    async def test_a_row_naming_a_missing_organization_is_reported(
        self, database: Database, world: World
    ) -> None:
        [problem] = await record(database, organization_id=999_999, actor_id=world.admin.id)
        assert problem.startswith("1 audit rows name an organization that does not exist")

    async def test_a_row_naming_a_missing_actor_is_reported(
        self, database: Database, world: World
    ) -> None:
        [problem] = await record(database, organization_id=world.org_id, actor_id=999_999)
        assert problem.startswith("1 audit rows name an actor who is not a user")
