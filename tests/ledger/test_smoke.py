from tests.factories import World
from tokendesk.db import Database
from tokendesk.ledger import service as ledger
from tokendesk.ledger.doctor import check_balances


async def test_world_balances_follow_allocation_rules(database: Database, world: World) -> None:
    async with database.transaction() as s:
        alice = await ledger.get_balance(s, user_id=world.alice.id)
        bob = await ledger.get_balance(s, user_id=world.bob.id)
        nora = await ledger.get_balance(s, user_id=world.nora.id)
        assert (alice.remaining, bob.remaining, nora.remaining) == (50_000, 100_000, 5_000)
        assert await check_balances(s) == []
