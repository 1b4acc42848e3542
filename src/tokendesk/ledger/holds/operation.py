"""The one hold operation: the backend's quick strategy, chosen at start-up, then the
general path for whatever it left."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tokendesk.db import FALLBACK, Database, Fallback, is_outage
from tokendesk.db.refusals import refusal
from tokendesk.ledger.holds.base import Hold, HoldRequest, QuickHolds, QuickResult
from tokendesk.ledger.holds.general import GeneralHolds
from tokendesk.ledger.holds.postgres import OneStatementHolds
from tokendesk.ledger.holds.sqlite import SqliteQuickHolds

log = logging.getLogger(__name__)


def quick_holds_for(database: Database, *, ttl_seconds: int) -> QuickHolds | None:
    """The backend's quick strategy: SQLite's quick path where the database is a file,
    PostgreSQL's one statement; None where there is none (in-memory SQLite)."""
    if not database.is_sqlite:
        return OneStatementHolds(database, ttl_seconds=ttl_seconds)
    if database.quick_path is not None and database.quick_path.usable:
        return SqliteQuickHolds(database, ttl_seconds=ttl_seconds)
    return None


class Holds:
    """Hold tokens for many calls at once, each held whole, shrunk (``at_least``) or
    refused exactly as :func:`ledger.reserve` would, never overspending under
    concurrency: ``quick`` first where there is one, the general path for the rest.

    :func:`holds_for` builds it with the backend's strategy; the specification test
    builds it with each strategy the backend has.
    """

    def __init__(self, database: Database, *, ttl_seconds: int, quick: QuickHolds | None) -> None:
        self.general = GeneralHolds(database, ttl_seconds=ttl_seconds)
        self.quick = quick

    async def hold(self, requests: Sequence[HoldRequest]) -> list[Hold | Exception]:
        """One result per request, in order: the hold or why there is none.

        Never raises: holds already committed by the quick strategy stand (and reach
        their callers) even if the general path then fails for the others.
        """
        quick: list[QuickResult] | Fallback = FALLBACK
        if self.quick is not None:
            try:
                quick = await self.quick.hold(requests)
            except Exception as exc:
                if is_outage(exc):
                    # The general way cannot reach the database either: every call hears
                    # of the outage now (a 503). A hold committed just as the connection
                    # dropped is nobody's and expires on schedule.
                    return [exc] * len(requests)
                # Nothing was committed (one transaction, or one statement): all go the
                # general way, which waits for locks and reports each call's own error.
                # SQLite refusing writes is no fault of this code: the general path's
                # transaction logs it in one line, not a traceback per batch.
                if refusal(exc) is None:
                    log.warning("quick hold of %d calls failed", len(requests), exc_info=True)
        if isinstance(quick, Fallback):
            return await self.general.hold(requests)
        results: list[Hold | Exception | Fallback] = list(quick)
        rest = [i for i, result in enumerate(results) if isinstance(result, Fallback)]
        if rest:
            # What the quick strategy tried (each user's fit) need not be tried again.
            held = await self.general.hold([requests[i] for i in rest], fits_tried=True)
            for i, result in zip(rest, held, strict=True):
                results[i] = result
        done = [result for result in results if not isinstance(result, Fallback)]
        assert len(done) == len(requests)
        return done


def holds_for(database: Database, *, ttl_seconds: int) -> Holds:
    """The hold operation with the backend's quick strategy, chosen once at start-up."""
    return Holds(
        database, ttl_seconds=ttl_seconds, quick=quick_holds_for(database, ttl_seconds=ttl_seconds)
    )
