"""Holding a member's tokens for calls in flight, many calls at once: one operation
(:class:`Holds`) with one quick strategy per backend, chosen at start-up, and the
general row-lock path both fall back to.

- SQLite file database: :mod:`.sqlite`, raw statements on the quick path, on the loop.
- PostgreSQL: :mod:`.postgres`, the whole batch in one statement.
- Either, and whatever a quick strategy leaves (an ended period, no balance):
  :mod:`.general`, which rolls periods over and ends in :func:`ledger.reserve`.

Every strategy writes ``balances.reserved`` and the reservation rows alike, and
refuses with the same :class:`InsufficientTokens`; tests/ledger/test_hold_strategies.py
is the one specification they all pass.
"""

from tokendesk.ledger.holds.base import Hold, HoldRequest, QuickHolds, QuickResult
from tokendesk.ledger.holds.general import GeneralHolds
from tokendesk.ledger.holds.operation import Holds, holds_for, quick_holds_for
from tokendesk.ledger.holds.postgres import OneStatementHolds
from tokendesk.ledger.holds.sqlite import SqliteQuickHolds

__all__ = [
    "GeneralHolds",
    "Hold",
    "HoldRequest",
    "Holds",
    "OneStatementHolds",
    "QuickHolds",
    "QuickResult",
    "SqliteQuickHolds",
    "holds_for",
    "quick_holds_for",
]
