"""What every hold strategy takes and gives: requests, holds, and the strategy's shape."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from tokendesk.bounds import DB_INT_MAX
from tokendesk.db import Fallback
from tokendesk.errors import AppError


@dataclass(frozen=True)
class HoldRequest:
    """A call's hold: all of ``amount``, or with ``at_least`` what remains up to it."""

    user_id: int
    organization_id: int
    amount: int
    at_least: int | None = None

    @property
    def least(self) -> int:
        """The smallest hold that will do."""
        return self.amount if self.at_least is None else self.at_least


@dataclass(frozen=True)
class Hold:
    """A hold taken: its reservation and the tokens it holds, and the balance as the
    statement that held it left it, so a caller can tell the member where they stand
    without asking the database again."""

    id: int
    amount: int
    remaining: int  # what the balance has left once held
    given: int  # what the period gives (ledger.models.given_of)
    resets_at: datetime  # the end of the balance's period


# A quick strategy's answer for one request: held, refused, or left for the general path.
QuickResult = Hold | AppError | Fallback


class QuickHolds(Protocol):
    """A backend's quick way to hold: decides what it can where the balance's period is
    current, and leaves the rest (:data:`~tokendesk.db.FALLBACK`) for the general path.

    It returns FALLBACK as a whole where it ran nothing; it raises only where nothing
    was committed either.
    """

    async def hold(self, requests: Sequence[HoldRequest]) -> list[QuickResult] | Fallback: ...


def holdable(request: HoldRequest) -> bool:
    """What the quick strategies take; anything else is left for ledger.reserve to refuse."""
    return 0 < request.least <= request.amount <= DB_INT_MAX
