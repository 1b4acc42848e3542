"""The gateway's hold batcher and background settler, without HTTP."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from sqlalchemy import make_url, select, text, update

from tests.factories import World
from tests.fake_upstream import free_port
from tests.ledger.helpers import end_period
from tokendesk.accounts.users import create_user
from tokendesk.db import FALLBACK, Database
from tokendesk.errors import AppError, InsufficientTokens, InvalidInput
from tokendesk.gateway import holds
from tokendesk.gateway.holds import Hold, HoldBatcher, Settlement, Settler
from tokendesk.ledger import service as ledger
from tokendesk.ledger.doctor import check_balances
from tokendesk.ledger.holds import HoldRequest, general, postgres
from tokendesk.ledger.holds import sqlite as sqlite_holds
from tokendesk.ledger.holds.general import reserve_each
from tokendesk.ledger.models import (
    Balance,
    EntryKind,
    Reservation,
    ReservationStatus,
)
from tokendesk.metering.ingest import UsageRecorder
from tokendesk.metering.models import UsageEvent
from tokendesk.metering.service import UsageInput
from tokendesk.metering.settlements import settle_many


def usage(event_id: str, user_id: int, tokens: int) -> UsageInput:
    return UsageInput(
        event_id=event_id,
        user_id=user_id,
        model="fast",
        prompt_tokens=tokens,
        completion_tokens=0,
        total_tokens=tokens,
        occurred_at=datetime.now(UTC),
        source="gateway",
    )


async def hold(database: Database, world: World, user_id: int, amount: int) -> int:
    taken = await HoldBatcher(database, ttl_seconds=60).hold(
        user_id=user_id, organization_id=world.org_id, amount=amount
    )
    return taken.id


class TestHoldBatcher:
    async def test_holds_sharing_a_batch_never_exceed_the_balance(
        self, database: Database, world: World
    ) -> None:
        # nora has 5,000 tokens; twelve calls of 1,000 arrive together, so share a batch.
        batcher = HoldBatcher(database, ttl_seconds=60)
        outcomes = await asyncio.gather(
            *(
                batcher.hold(user_id=world.nora.id, organization_id=world.org_id, amount=1_000)
                for _ in range(12)
            ),
            return_exceptions=True,
        )
        held = [o.id for o in outcomes if isinstance(o, Hold)]
        refused = [o for o in outcomes if isinstance(o, InsufficientTokens)]
        assert (len(set(held)), len(refused)) == (5, 7)
        assert "0 left, 1000 needed" in refused[0].message
        async with database.transaction(write=False) as s:
            balance = await ledger.get_balance(s, user_id=world.nora.id)
            assert (balance.reserved, balance.remaining) == (5_000, 0)
            rows = (await s.scalars(select(Reservation).where(Reservation.id.in_(held)))).all()
            assert {(r.user_id, r.amount, r.status) for r in rows} == {
                (world.nora.id, 1_000, ReservationStatus.HELD.value)
            }
            assert all(r.expires_at - r.created_at == timedelta(seconds=60) for r in rows)
            assert await check_balances(s) == []

    async def test_each_caller_gets_a_hold_of_its_own_user_and_amount(
        self, database: Database, world: World
    ) -> None:
        batcher = HoldBatcher(database, ttl_seconds=60)
        people = [world.alice, world.bob, world.amy, world.admin]
        calls = [(p.id, amount) for amount in (300, 100, 300, 200) for p in people]
        taken = await asyncio.gather(
            *(
                batcher.hold(user_id=user, organization_id=world.org_id, amount=amount)
                for user, amount in calls
            )
        )
        ids = [t.id for t in taken]
        assert [t.amount for t in taken] == [amount for _, amount in calls]
        assert len(set(ids)) == len(calls)
        async with database.transaction(write=False) as s:
            rows = {r.id: r for r in (await s.scalars(select(Reservation))).all()}
            assert [(rows[i].user_id, rows[i].amount) for i in ids] == calls
            for person in people:
                balance = await ledger.get_balance(s, user_id=person.id)
                assert balance.reserved == 900
            assert await check_balances(s) == []

    async def test_a_hold_after_the_period_ended_starts_the_new_period_first(
        self, database: Database, world: World
    ) -> None:
        start = await end_period(database, world.nora.id, used=5_000)
        # Spent out in the old period: only the new period's allocation can cover this.
        await hold(database, world, world.nora.id, 4_000)
        async with database.transaction(write=False) as s:
            balance = await ledger.get_balance(s, user_id=world.nora.id)
            assert (balance.period_start, balance.used, balance.reserved) == (start, 0, 4_000)
            assert await check_balances(s) == []

    async def test_a_hold_waits_for_another_process_writing_sqlite(
        self, database: Database, world: World, backend: str
    ) -> None:
        if backend != "sqlite":
            pytest.skip("SQLite's database-wide write lock")
        path = make_url(database.url).database
        assert path
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            asyncio.get_running_loop().call_later(0.3, other.execute, "COMMIT")
            started = time.monotonic()
            hold_id = await asyncio.wait_for(hold(database, world, world.nora.id, 100), 10)
            assert time.monotonic() - started >= 0.3
        finally:
            other.close()
        async with database.transaction(write=False) as s:
            reservation = await s.get(Reservation, hold_id)
            assert reservation is not None and reservation.amount == 100

    async def test_processes_holding_at_once_never_overspend(
        self, database: Database, world: World, backend: str
    ) -> None:
        # Four processes' worth of batchers, each with its own connection pool.
        databases = [Database(database.url) for _ in range(4)]
        try:
            batchers = [HoldBatcher(db, ttl_seconds=60) for db in databases]
            outcomes = await asyncio.gather(
                *(
                    batchers[n % 4].hold(
                        user_id=world.nora.id, organization_id=world.org_id, amount=1_000
                    )
                    for n in range(40)
                ),
                return_exceptions=True,
            )
        finally:
            for db in databases:
                await db.dispose()
        held = [o.id for o in outcomes if isinstance(o, Hold)]
        assert len(set(held)) == 5, outcomes
        assert all(isinstance(o, Hold | InsufficientTokens) for o in outcomes), outcomes
        async with database.transaction(write=False) as s:
            balance = await ledger.get_balance(s, user_id=world.nora.id)
            assert (balance.reserved, balance.remaining) == (5_000, 0)
            assert await check_balances(s) == []

    async def test_holds_already_committed_reach_their_callers_when_the_rest_fail(
        self, database: Database, world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async def broken(*_: object, **__: object) -> None:
            raise RuntimeError("database went away")

        monkeypatch.setattr(general, "hold_many", broken)
        monkeypatch.setattr(general, "reserve_each", broken)
        await end_period(database, world.nora.id)
        batcher = HoldBatcher(database, ttl_seconds=60)
        # alice's call is held at once; nora's period has ended, which only the general
        # path can roll over.
        calls = [(world.alice.id, 1_000)] + [(world.nora.id, 1_000)] * 3
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                *(
                    batcher.hold(user_id=user, organization_id=world.org_id, amount=amount)
                    for user, amount in calls
                ),
                return_exceptions=True,
            ),
            10,
        )
        assert isinstance(outcomes[0], Hold)
        assert all(isinstance(o, RuntimeError) for o in outcomes[1:]), outcomes
        async with database.transaction(write=False) as s:
            alice = await s.get(Balance, world.alice.id)
            nora = await s.get(Balance, world.nora.id)
            assert alice is not None and nora is not None
            assert (alice.reserved, nora.reserved) == (1_000, 0)


class TestQuickRefusal:
    """Calls refused for lack of tokens are decided on the quick path, where the
    balance's period is current, with the exact message."""

    @pytest.fixture(autouse=True)
    def no_general_path(self, monkeypatch: pytest.MonkeyPatch) -> None:
        async def general_path(*_: object, **__: object) -> None:
            raise AssertionError("took the general path")

        monkeypatch.setattr(general, "hold_many", general_path)
        monkeypatch.setattr(general, "reserve_each", general_path)

    async def test_calls_beyond_the_balance_are_refused_at_once(
        self, database: Database, world: World
    ) -> None:
        batcher = HoldBatcher(database, ttl_seconds=60)
        await batcher.hold(user_id=world.nora.id, organization_id=world.org_id, amount=4_950)
        # nora's three calls share a batch with alice's, which is held.
        calls = [(world.nora.id, 100, None)] * 3 + [(world.alice.id, 100, None)]
        calls += [(world.nora.id, 200, 60)]
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                *(
                    batcher.hold(
                        user_id=user, organization_id=world.org_id, amount=amount, at_least=least
                    )
                    for user, amount, least in calls
                ),
                return_exceptions=True,
            ),
            10,
        )
        refused = [o for o in outcomes if isinstance(o, InsufficientTokens)]
        assert len(refused) == 4 and isinstance(outcomes[3], Hold), outcomes
        assert [r.message.split(";")[0] for r in refused] == 3 * [
            "not enough tokens: 50 left, 100 needed"
        ] + ["not enough tokens: 50 left, 60 needed"]
        # What nora's call in flight holds may come back: waiting can help.
        assert all(r.could_wait for r in refused)
        assert await held_and_reserved(database, world.nora.id) == ([4_950], 4_950)

    async def test_a_lone_call_beyond_a_spent_balance_is_refused_at_once(
        self, database: Database, world: World
    ) -> None:
        async with database.transaction() as s:
            await ledger.credit(
                s,
                user_id=world.nora.id,
                kind=EntryKind.ADJUSTMENT,
                amount=-5_000,
                actor_id=None,
                reason="spent",
            )
        with pytest.raises(InsufficientTokens) as refused:
            await HoldBatcher(database, ttl_seconds=60).hold(
                user_id=world.nora.id, organization_id=world.org_id, amount=100
            )
        assert "0 left, 100 needed" in refused.value.message
        assert not refused.value.could_wait  # nothing held that could come back


class TestPoisonedCall:
    """A failure inside a batched hold reaches only the call that caused it."""

    @pytest.mark.parametrize("path", ["quick", "general"])
    async def test_an_amount_beyond_what_a_balance_can_hold_fails_only_its_own_call(
        self, database: Database, world: World, path: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        await take_path(path, database, world.alice.id, monkeypatch)
        batcher = HoldBatcher(database, ttl_seconds=60)
        calls = [(world.nora.id, 2**64), (world.alice.id, 300), (world.alice.id, 200)]
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                *(
                    batcher.hold(user_id=user, organization_id=world.org_id, amount=amount)
                    for user, amount in calls
                ),
                return_exceptions=True,
            ),
            10,
        )
        assert isinstance(outcomes[0], InvalidInput) and outcomes[0].field == "amount"
        assert [o.amount for o in outcomes[1:] if isinstance(o, Hold)] == [300, 200], outcomes
        amounts, reserved = await held_and_reserved(database, world.alice.id)
        assert (sorted(amounts), reserved) == ([200, 300], 500)
        assert await held_and_reserved(database, world.nora.id) == ([], 0)

    @pytest.mark.parametrize("path", ["quick", "general"])
    async def test_a_call_that_fails_any_batch_fails_alone_and_the_batcher_carries_on(
        self, database: Database, world: World, path: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        await take_path(path, database, world.alice.id, monkeypatch)
        poison = 13  # an amount no transaction holding it can commit

        def failing_with_poison(work: Callable[..., Any]) -> Callable[..., Any]:
            """``work``, failing before it runs on any batch that holds the poison."""

            def check(requests: list[HoldRequest]) -> None:
                if any(r.amount == poison for r in requests):
                    raise RuntimeError("poisoned")

            if asyncio.iscoroutinefunction(work):

                async def run_async(where: Any, requests: Any, **kw: Any) -> Any:
                    check(requests)
                    return await work(where, requests, **kw)

                return run_async

            def run(where: Any, requests: Any, **kw: Any) -> Any:
                check(requests)
                return work(where, requests, **kw)

            return run

        for module, name in (
            (sqlite_holds, "hold_each"),
            (postgres, "hold_in_one_round_trip"),
            (general, "hold_many"),
            (general, "reserve_each"),
        ):
            monkeypatch.setattr(module, name, failing_with_poison(getattr(module, name)))
        batcher = HoldBatcher(database, ttl_seconds=60)
        calls = [(world.alice.id, 300), (world.nora.id, poison), (world.bob.id, 200)]
        calls += [(world.alice.id, 100)]
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                *(
                    batcher.hold(user_id=user, organization_id=world.org_id, amount=amount)
                    for user, amount in calls
                ),
                return_exceptions=True,
            ),
            10,
        )
        assert isinstance(outcomes[1], RuntimeError), outcomes
        good = [o for n, o in enumerate(outcomes) if n != 1]
        assert [o.amount for o in good if isinstance(o, Hold)] == [300, 200, 100], outcomes
        later = await asyncio.wait_for(
            batcher.hold(user_id=world.nora.id, organization_id=world.org_id, amount=100), 10
        )
        assert later.amount == 100
        amounts, reserved = await held_and_reserved(database, world.alice.id)
        assert (sorted(amounts), reserved) == ([100, 300], 400)
        assert await held_and_reserved(database, world.bob.id) == ([200], 200)
        assert await held_and_reserved(database, world.nora.id) == ([100], 100)


def quick_path_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the quick paths fail, so that every hold goes the general way (hold_many)."""

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("quick path unavailable")

    monkeypatch.setattr(sqlite_holds, "hold_each", broken)
    monkeypatch.setattr(postgres, "hold_in_one_round_trip", broken)


# How a batch reaches the balance: the quick path (SQLite's plain connection or
# PostgreSQL's one statement), the one-by-one path after an ended period, or the
# general path when the quick one failed.
PATHS = ["quick", "period ended", "general"]


async def take_path(
    path: str, database: Database, user_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    if path == "period ended":
        await end_period(database, user_id, used=5_000)
    elif path == "general":
        quick_path_broken(monkeypatch)


async def held_and_reserved(database: Database, user_id: int) -> tuple[list[int], int]:
    """The amounts of the user's holds, in order, and what the balance has reserved."""
    async with database.transaction(write=False) as s:
        amounts = (
            await s.scalars(
                select(Reservation.amount)
                .where(Reservation.user_id == user_id)
                .order_by(Reservation.id)
            )
        ).all()
        balance = await ledger.get_balance(s, user_id=user_id)
        assert await check_balances(s) == []
        return list(amounts), balance.reserved


class TestShrinkingHold:
    """``at_least``: hold what remains, up to the amount, or refuse below the floor."""

    @pytest.mark.parametrize("path", PATHS)
    async def test_a_hold_shrinks_to_what_remains(
        self, database: Database, world: World, path: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        await take_path(path, database, world.nora.id, monkeypatch)
        batcher = HoldBatcher(database, ttl_seconds=60)
        # nora has 5,000 tokens (a new period's, where the old one ended).
        first = await batcher.hold(
            user_id=world.nora.id, organization_id=world.org_id, amount=4_000, at_least=100
        )
        second = await batcher.hold(
            user_id=world.nora.id, organization_id=world.org_id, amount=4_000, at_least=100
        )
        assert (first.amount, second.amount) == (4_000, 1_000)
        assert await held_and_reserved(database, world.nora.id) == ([4_000, 1_000], 5_000)

    @pytest.mark.parametrize("path", PATHS)
    async def test_a_hold_is_refused_below_its_floor_with_what_is_left(
        self, database: Database, world: World, path: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        await take_path(path, database, world.nora.id, monkeypatch)
        batcher = HoldBatcher(database, ttl_seconds=60)
        await batcher.hold(user_id=world.nora.id, organization_id=world.org_id, amount=4_950)
        with pytest.raises(InsufficientTokens) as refused:
            await batcher.hold(
                user_id=world.nora.id, organization_id=world.org_id, amount=4_000, at_least=64
            )
        assert "50 left, 64 needed" in refused.value.message
        assert await held_and_reserved(database, world.nora.id) == ([4_950], 4_950)

    @pytest.mark.parametrize("path", PATHS)
    async def test_a_hold_that_fits_is_held_whole(
        self, database: Database, world: World, path: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        await take_path(path, database, world.nora.id, monkeypatch)
        taken = await HoldBatcher(database, ttl_seconds=60).hold(
            user_id=world.nora.id, organization_id=world.org_id, amount=3_000, at_least=64
        )
        assert taken.amount == 3_000
        assert await held_and_reserved(database, world.nora.id) == ([3_000], 3_000)

    @pytest.mark.parametrize("path", PATHS)
    async def test_shrinking_holds_sharing_a_batch_never_exceed_the_balance(
        self, database: Database, world: World, path: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        await take_path(path, database, world.nora.id, monkeypatch)
        batcher = HoldBatcher(database, ttl_seconds=60)
        outcomes = await asyncio.gather(
            *(
                batcher.hold(
                    user_id=world.nora.id, organization_id=world.org_id, amount=1_500, at_least=300
                )
                for _ in range(6)
            ),
            return_exceptions=True,
        )
        taken = sorted(o.amount for o in outcomes if isinstance(o, Hold))
        assert taken == [500, 1_500, 1_500, 1_500], outcomes
        assert sum(isinstance(o, InsufficientTokens) for o in outcomes) == 2
        assert await held_and_reserved(database, world.nora.id) == (
            [1_500, 1_500, 1_500, 500],
            5_000,
        )

    @pytest.mark.parametrize("calls_per_process", [1, 4])
    async def test_processes_holding_shrinking_holds_at_once_never_overspend(
        self, database: Database, world: World, calls_per_process: int
    ) -> None:
        # Six processes' worth of batchers, each with its own connection pool; one call
        # each is a batch of one (PostgreSQL's one statement), four share batches.
        databases = [Database(database.url) for _ in range(6)]
        try:
            batchers = [HoldBatcher(db, ttl_seconds=60) for db in databases]
            outcomes = await asyncio.wait_for(
                asyncio.gather(
                    *(
                        batcher.hold(
                            user_id=world.nora.id,
                            organization_id=world.org_id,
                            amount=1_500,
                            at_least=300,
                        )
                        for batcher in batchers
                        for _ in range(calls_per_process)
                    ),
                    return_exceptions=True,
                ),
                30,
            )
        finally:
            for db in databases:
                await db.dispose()
        assert all(isinstance(o, Hold | InsufficientTokens) for o in outcomes), outcomes
        taken = sorted(o.amount for o in outcomes if isinstance(o, Hold))
        assert taken == [500, 1_500, 1_500, 1_500], outcomes
        amounts, reserved = await held_and_reserved(database, world.nora.id)
        assert (sorted(amounts), reserved) == (taken, 5_000)

    async def test_a_floor_above_the_amount_is_refused_naming_the_field(
        self, database: Database, world: World
    ) -> None:
        with pytest.raises(InvalidInput) as refused:
            await HoldBatcher(database, ttl_seconds=60).hold(
                user_id=world.nora.id, organization_id=world.org_id, amount=100, at_least=200
            )
        assert refused.value.field == "at_least"
        assert await held_and_reserved(database, world.nora.id) == ([], 0)


async def waiting_for_locks(database: Database, count: int) -> None:
    """Return once ``count`` sessions wait for a row lock (PostgreSQL)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        async with database.transaction(write=False) as s:
            waiting = await s.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            )
        if waiting is not None and waiting >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {count} sessions waiting for locks")


async def queued_for_one_row(
    database: Database,
    user_id: int,
    first: Callable[[], Awaitable[Any]],
    then: Callable[[], Awaitable[Any]],
) -> list[Any]:
    """Run ``first``, then ``then``, each in its own transaction, so that both queue for
    the user's balance row, ``first`` ahead; their results once both are done."""
    async with database.transaction() as gate:
        row = select(Balance.user_id).where(Balance.user_id == user_id)
        await gate.execute(row.with_for_update())
        ahead = asyncio.create_task(first())
        await waiting_for_locks(database, 1)
        behind = asyncio.create_task(then())
        await waiting_for_locks(database, 2)
    return list(await asyncio.wait_for(asyncio.gather(ahead, behind), 10))


async def expired_hold(database: Database, world: World, user_id: int) -> int:
    """A hold of 100 tokens that expired a second ago, not yet released."""
    hold_id = await hold(database, world, user_id, 100)
    async with database.transaction() as s:
        await s.execute(
            update(Reservation)
            .where(Reservation.id == hold_id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    return hold_id


async def expire(database: Database) -> int:
    async with database.transaction() as s:
        return await ledger.expire_holds(s)


@pytest.mark.usefixtures("postgres_only")
class TestLockOrder:
    """Transactions that change the same balances take them in one order (PostgreSQL)."""

    async def test_holds_one_by_one_and_a_settlement_never_wait_for_each_other(
        self, database: Database, world: World
    ) -> None:
        low, high = sorted([world.alice.id, world.bob.id])
        held = [await hold(database, world, user, 100) for user in (low, high)]
        settlements = [
            Settlement(hold_id, world.org_id, usage(f"order-{user}", user, 30))
            for hold_id, user in zip(held, (low, high), strict=True)
        ]
        calls = [HoldRequest(user, world.org_id, 200) for user in (high, low)]

        async def settle() -> None:
            async with database.transaction() as s:
                await settle_many(s, settlements)

        async def reserve() -> list[Hold | AppError]:
            async with database.transaction() as s:
                return await reserve_each(s, calls, ttl_seconds=60)

        # The settlement queues first for the lower user's row, then the one-by-one
        # holds (the exact path: a period to roll over, or a balance that may not
        # cover them all) queue too. Taking the higher user first, they would hold
        # the row the settlement needs next while waiting for the one it gets.
        _, reserved = await queued_for_one_row(database, low, settle, reserve)
        assert all(isinstance(result, Hold) for result in reserved), reserved
        async with database.transaction(write=False) as s:
            for user in (low, high):
                balance = await ledger.get_balance(s, user_id=user)
                assert (balance.used, balance.reserved) == (30, 200)
            assert await check_balances(s) == []

    async def test_expiring_holds_and_a_settlement_never_wait_for_each_other(
        self, database: Database, world: World
    ) -> None:
        hold_id = await expired_hold(database, world, world.alice.id)
        late = Settlement(hold_id, world.org_id, usage("just-expired", world.alice.id, 30))

        async def settle() -> None:
            async with database.transaction() as s:
                await settle_many(s, [late])

        # The settlement queues for the balance, then the expiry comes for the same hold.
        # Taking the reservation before the balance, it would hold the row the
        # settlement needs next while waiting for the balance the settlement gets.
        _, expired = await queued_for_one_row(
            database, world.alice.id, settle, partial(expire, database)
        )
        assert expired == 0  # settled first: nothing left to expire
        async with database.transaction(write=False) as s:
            balance = await ledger.get_balance(s, user_id=world.alice.id)
            assert (balance.used, balance.reserved) == (30, 0)
            assert await check_balances(s) == []

    async def test_a_release_and_expiring_holds_never_wait_for_each_other(
        self, database: Database, world: World
    ) -> None:
        hold_id = await expired_hold(database, world, world.alice.id)

        async def release() -> None:
            await holds.release(database, reservation_id=hold_id)

        # The expiry queues for the balance, then the call's failure releases the same
        # hold. Taking the reservation first, the release would hold the row the
        # expiry needs next while waiting for the balance the expiry gets.
        expired, _ = await queued_for_one_row(
            database, world.alice.id, partial(expire, database), release
        )
        assert expired == 1  # expired first: the release found it gone
        async with database.transaction(write=False) as s:
            reservation = await s.get(Reservation, hold_id)
            assert reservation is not None and reservation.status == ReservationStatus.EXPIRED
            balance = await ledger.get_balance(s, user_id=world.alice.id)
            assert (balance.used, balance.reserved) == (0, 0)
            assert await check_balances(s) == []

    async def test_usage_across_organizations_and_a_settlement_never_wait_for_each_other(
        self, database: Database, world: World
    ) -> None:
        async with database.transaction() as s:
            newcomer = await create_user(
                s, organization_id=world.org_id, email="newcomer@example.com", name="Newcomer"
            )
        # Organizations go in id order: the first one's user comes after the second's.
        low, high = world.oscar.id, newcomer.id
        assert world.org_id < world.other_org_id and low < high
        held = [
            (
                await HoldBatcher(database, ttl_seconds=60).hold(
                    user_id=user, organization_id=org, amount=100
                )
            ).id
            for user, org in ((low, world.other_org_id), (high, world.org_id))
        ]
        settlements = [
            Settlement(held[0], world.other_org_id, usage("settled-low", low, 30)),
            Settlement(held[1], world.org_id, usage("settled-high", high, 30)),
        ]

        async def settle() -> None:
            async with database.transaction() as s:
                await settle_many(s, settlements)

        recorder = UsageRecorder(database)
        transactions = 0
        record_group = recorder._record

        async def counted(group: Any) -> Any:
            nonlocal transactions
            transactions += 1
            return await record_group(group)

        # A combined transaction that fails (a deadlock too) is retried batch by batch.
        recorder._record = counted  # type: ignore[method-assign]

        async def record() -> None:
            # Reported at the same time, so recorded in one transaction.
            await asyncio.gather(
                recorder.record(organization_id=world.org_id, events=[usage("u-high", high, 5)]),
                recorder.record(
                    organization_id=world.other_org_id, events=[usage("u-low", low, 5)]
                ),
            )

        # The settlement queues first for the lower user's row. Organization by
        # organization, the usage would lock the higher user (first organization) and
        # queue for the lower, which the settlement gets and then needs the higher.
        await queued_for_one_row(database, low, settle, record)
        assert transactions == 1
        async with database.transaction(write=False) as s:
            for user in (low, high):
                balance = await ledger.get_balance(s, user_id=user)
                assert (balance.used, balance.reserved) == (35, 0)
            assert await check_balances(s) == []


class TestQuickWrite:
    async def test_commits_what_the_work_did_and_returns_its_result(
        self, database: Database, world: World, backend: str
    ) -> None:
        def work(connection: sqlite3.Connection) -> int:
            sql = "UPDATE balances SET adjusted = adjusted + 7 WHERE user_id = ?"
            return connection.execute(sql, (world.nora.id,)).rowcount

        result = await database.quick_write(work)
        if backend == "postgres":
            assert result is FALLBACK  # no shortcut: nothing ran
            return
        assert result == 1
        async with database.transaction(write=False) as s:
            assert (await ledger.get_balance(s, user_id=world.nora.id)).adjusted == 7

    async def test_rolls_back_when_the_work_raises(
        self, database: Database, world: World, backend: str
    ) -> None:
        if backend != "sqlite":
            pytest.skip("SQLite only")

        def work(connection: sqlite3.Connection) -> None:
            sql = "UPDATE balances SET adjusted = adjusted + 7 WHERE user_id = ?"
            connection.execute(sql, (world.nora.id,))
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            await database.quick_write(work)
        async with database.transaction(write=False) as s:
            assert (await ledger.get_balance(s, user_id=world.nora.id)).adjusted == 0
        assert await database.quick_write(lambda connection: 1) == 1  # usable again


class TestSettler:
    async def test_settlements_submitted_together_share_one_transaction(
        self, database: Database, world: World
    ) -> None:
        people = [world.alice, world.bob, world.amy]
        holds = [await hold(database, world, p.id, 100) for p in people]
        settler = Settler(database, linger_seconds=0.05)
        for n, (person, hold_id) in enumerate(zip(people, holds, strict=True)):
            settler.submit(Settlement(hold_id, world.org_id, usage(f"together-{n}", person.id, 30)))
        await settler.stop()
        async with database.transaction(write=False) as s:
            recorded = set((await s.scalars(select(UsageEvent.recorded_at))).all())
            assert len(recorded) == 1
            for person in people:
                balance = await ledger.get_balance(s, user_id=person.id)
                assert (balance.used, balance.reserved) == (30, 0)
            assert await check_balances(s) == []

    async def test_a_lone_settlement_is_committed_once_the_linger_has_passed(
        self, database: Database, world: World
    ) -> None:
        hold_id = await hold(database, world, world.alice.id, 100)
        settler = Settler(database, linger_seconds=0.05)
        started = time.monotonic()
        settler.submit(Settlement(hold_id, world.org_id, usage("lone", world.alice.id, 30)))
        await asyncio.wait_for(settler.drain(), 5)
        assert time.monotonic() - started >= 0.05
        await settler.stop()

    async def test_one_bad_settlement_does_not_lose_the_others(
        self, database: Database, world: World
    ) -> None:
        good = await hold(database, world, world.alice.id, 100)
        settler = Settler(database, linger_seconds=0.05)
        settler.submit(Settlement(good, world.org_id, usage("good", world.alice.id, 30)))
        # oscar belongs to the other organization: recording his usage here is refused.
        settler.submit(Settlement(good + 1000, world.org_id, usage("bad", world.oscar.id, 30)))
        await settler.stop()
        async with database.transaction(write=False) as s:
            balance = await ledger.get_balance(s, user_id=world.alice.id)
            assert (balance.used, balance.reserved) == (30, 0)
            assert await check_balances(s) == []

    async def test_settlements_that_meet_an_outage_are_kept_until_the_database_answers(
        self, postgres_only: None, database: Database, world: World, db_url: str
    ) -> None:
        hold_id = await hold(database, world, world.alice.id, 100)
        # The same database behind a port nothing listens on: every connection is refused.
        gone = Database(str(make_url(db_url).set(port=free_port())))
        settler = Settler(gone, linger_seconds=0)
        try:
            settler.submit(Settlement(hold_id, world.org_id, usage("kept", world.alice.id, 30)))
            deadline = time.monotonic() + 10
            while settler._retry_seconds == holds.RETRY_FIRST_SECONDS:
                assert time.monotonic() < deadline, "the settlement was never tried"
                await asyncio.sleep(0.05)
            # Tried and kept (queued again, or already in its next try): still held.
            async with database.transaction(write=False) as s:
                balance = await ledger.get_balance(s, user_id=world.alice.id)
                assert (balance.used, balance.reserved) == (0, 100)
            # The database answers again.
            settler.database = database
            await asyncio.wait_for(settler.drain(), 15)
        finally:
            # Whatever failed above, the settler can finish: it stops once it is drained.
            settler.database = database
            await asyncio.wait_for(settler.stop(), 15)
            await gone.dispose()
        async with database.transaction(write=False) as s:
            balance = await ledger.get_balance(s, user_id=world.alice.id)
            assert (balance.used, balance.reserved) == (30, 0)
            assert await check_balances(s) == []

    async def test_usage_beyond_what_a_balance_can_hold_fails_only_its_own_settlement(
        self, database: Database, world: World
    ) -> None:
        people = [world.alice, world.bob, world.amy]
        held = [await hold(database, world, p.id, 100) for p in people]
        settler = Settler(database, linger_seconds=0.05)
        for n, (person, hold_id) in enumerate(zip(people, held, strict=True)):
            tokens = 2**64 if person is world.bob else 30
            settler.submit(
                Settlement(hold_id, world.org_id, usage(f"poison-{n}", person.id, tokens))
            )
        await asyncio.wait_for(settler.drain(), 10)
        # Nothing stays stuck: a settlement submitted next is committed too.
        late = await hold(database, world, world.amy.id, 100)
        settler.submit(Settlement(late, world.org_id, usage("after", world.amy.id, 20)))
        await asyncio.wait_for(settler.stop(), 10)
        async with database.transaction(write=False) as s:
            balances = {p.id: await ledger.get_balance(s, user_id=p.id) for p in people}
            assert [(b.used, b.reserved) for b in balances.values()] == [
                (30, 0),
                (0, 100),  # bob's hold expires on schedule
                (50, 0),
            ]
            assert await check_balances(s) == []

    async def test_settles_on_sqlites_quick_path(
        self,
        database: Database,
        world: World,
        sqlite_only: None,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        hold_id = await hold(database, world, world.alice.id, 100)

        def no_normal_transactions(*args: object, **kwargs: object) -> None:
            raise AssertionError("settled through a normal transaction")

        monkeypatch.setattr(database, "transaction", no_normal_transactions)
        settler = Settler(database, linger_seconds=0)
        settler.submit(Settlement(hold_id, world.org_id, usage("quick", world.alice.id, 30)))
        await settler.stop()
        monkeypatch.undo()
        async with database.transaction(write=False) as s:
            balance = await ledger.get_balance(s, user_id=world.alice.id)
            assert (balance.used, balance.reserved) == (30, 0)
            assert await check_balances(s) == []

    async def test_a_settlement_after_the_period_ended_starts_the_new_period_first(
        self, database: Database, world: World
    ) -> None:
        hold_id = await hold(database, world, world.alice.id, 100)
        start = await end_period(database, world.alice.id)
        # The quick path cannot start a period: the settlement goes the normal way.
        settler = Settler(database, linger_seconds=0)
        settler.submit(Settlement(hold_id, world.org_id, usage("late", world.alice.id, 30)))
        await settler.stop()
        async with database.transaction(write=False) as s:
            balance = await ledger.get_balance(s, user_id=world.alice.id)
            assert (balance.period_start, balance.used, balance.reserved) == (start, 30, 0)
            event = (await s.scalars(select(UsageEvent))).one()
            assert (event.event_id, event.total_tokens) == ("late", 30)
            assert await check_balances(s) == []
