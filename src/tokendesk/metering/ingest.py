"""Usage batches reported at the same time are recorded in one transaction (group commit).

A batch of usage costs a fixed dozen statements whatever its size, and on
SQLite every batch waits for the one writer. So the batches that arrive while a
transaction runs are recorded together in the next one: each organization's
events, in arrival order, go through one :func:`service.record_usage` call, and
each caller gets back exactly the results of its own events. An event id that
two waiting batches share is charged once, for the batch that came first, and
is a replay for the other, as if they had run one after the other.

When a combined transaction fails (one batch names a user of another
organization, say), each batch is recorded again on its own, so one bad batch
gets its own error, naming its own event, and the others are recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from tokendesk.db import Database, is_outage
from tokendesk.ledger import service as ledger
from tokendesk.metering.service import UsageInput, UsageResult, record_usage
from tokendesk.observability.metrics import Metrics

# Events per transaction: keeps one transaction (and the writer's wait) short.
MAX_EVENTS = 2_000


@dataclass
class _Batch:
    organization_id: int
    events: Sequence[UsageInput]
    answer: asyncio.Future[list[UsageResult]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class UsageRecorder:
    """Records usage batches for one database, many per transaction; the runtime
    keeps the process's one (:class:`tokendesk.runtime.Runtime`)."""

    def __init__(
        self, database: Database, *, max_events: int = MAX_EVENTS, metrics: Metrics | None = None
    ) -> None:
        self.database = database
        self.max_events = max_events
        self.metrics = metrics if metrics is not None else Metrics()
        self._waiting: list[_Batch] = []
        self._task: asyncio.Task[None] | None = None

    async def record(
        self, *, organization_id: int, events: Sequence[UsageInput]
    ) -> list[UsageResult]:
        """The results of ``events``, as :func:`service.record_usage` gives them."""
        batch = _Batch(organization_id, events)
        self._waiting.append(batch)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        # Shielded: a caller who goes away must not cancel the others' transaction.
        return await asyncio.shield(batch.answer)

    async def close(self) -> None:
        """Wait for the batches already taken to be recorded (at shutdown)."""
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task

    async def _run(self) -> None:
        while self._waiting:
            group = self._take()
            try:
                answers = await self._record(group)
            except Exception as exc:
                if len(group) == 1 or is_outage(exc):
                    # Alone, or the database is out of reach for every batch alike (each
                    # reporter hears 503 and sends its batch again, the same event ids).
                    for batch in group:
                        self._fail(batch, exc)
                    continue
                # Each alone: the failing batch gets its own error, the rest are recorded.
                for batch in group:
                    try:
                        [answer] = await self._record([batch])
                    except Exception as alone:
                        self._fail(batch, alone)
                    else:
                        self._answer(batch, answer)
                continue
            for batch, answer in zip(group, answers, strict=True):
                self._answer(batch, answer)

    def _answer(self, batch: _Batch, results: list[UsageResult]) -> None:
        replayed = sum(1 for result in results if result.replayed)
        self.metrics.usage("replayed", replayed)
        self.metrics.usage("recorded", len(results) - replayed)
        _answer(batch, results)

    def _fail(self, batch: _Batch, exc: Exception) -> None:
        self.metrics.usage("failed", len(batch.events))
        _fail(batch, exc)

    def _take(self) -> list[_Batch]:
        """The waiting batches, oldest first, up to about ``max_events`` events."""
        group: list[_Batch] = []
        events = 0
        while self._waiting and (
            not group or events + len(self._waiting[0].events) <= self.max_events
        ):
            batch = self._waiting.pop(0)
            group.append(batch)
            events += len(batch.events)
        return group

    async def _record(self, group: list[_Batch]) -> list[list[UsageResult]]:
        by_org: dict[int, list[_Batch]] = defaultdict(list)
        for batch in group:
            by_org[batch.organization_id].append(batch)
        answers: dict[int, list[UsageResult]] = {}
        async with self.database.transaction() as session:
            if len(by_org) > 1:
                # All the group's users at once: organization by organization, they
                # would be locked in user order within each organization only.
                users = {usage.user_id for batch in group for usage in batch.events}
                await ledger.lock_in_user_order(session, users)
            for organization_id, batches in sorted(by_org.items()):
                results = await record_usage(
                    session,
                    organization_id=organization_id,
                    events=[usage for batch in batches for usage in batch.events],
                )
                start = 0
                for batch in batches:
                    answers[id(batch)] = results[start : start + len(batch.events)]
                    start += len(batch.events)
        return [answers[id(batch)] for batch in group]


def _answer(batch: _Batch, results: list[UsageResult]) -> None:
    if not batch.answer.done():
        batch.answer.set_result(results)


def _fail(batch: _Batch, exc: Exception) -> None:
    if not batch.answer.done():
        batch.answer.set_exception(exc)
        batch.answer.exception()  # retrieved here too: its caller may have gone
