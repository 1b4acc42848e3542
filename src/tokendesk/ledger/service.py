"""The ledger's API: what other domains call to read and change balances.

Every change to a balance is a ledger entry written in the same transaction as
the cached ``balances`` row, so ``doctor`` can always prove the two agree.
Concurrency is handled by conditional updates, never by read-modify-write, and
a transaction that changes several balances takes their rows in user order
(:func:`lock_in_user_order`), so two transactions never deadlock on them.
"""

from tokendesk.ledger.allocations import allocation_expression, resolve_allocation
from tokendesk.ledger.balances import (
    BalanceView,
    balance_event,
    balance_snapshot,
    balance_snapshots,
    get_balance,
    get_balances,
    is_low,
    open_balance,
)
from tokendesk.ledger.credits import credit
from tokendesk.ledger.grants import grant_approved
from tokendesk.ledger.locks import lock_in_user_order, users_of
from tokendesk.ledger.models import BALANCES, REMAINING
from tokendesk.ledger.reads import (
    current_balance,
    current_balances,
    opening_debit,
    rolled_over_balances,
)
from tokendesk.ledger.reservations import (
    check_hold,
    expire_holds,
    insufficient,
    release,
    reserve,
    return_holds,
    settle,
    settle_holds,
)
from tokendesk.ledger.rollover import carried_debit, carried_from, rollover_due
from tokendesk.ledger.rule_changes import move_period_end, reapply_allocations
from tokendesk.ledger.usage import MemberBalance, debit_usage, lock_member_balances

__all__ = [
    "BALANCES",
    "REMAINING",
    "BalanceView",
    "MemberBalance",
    "allocation_expression",
    "balance_event",
    "balance_snapshot",
    "balance_snapshots",
    "carried_debit",
    "carried_from",
    "check_hold",
    "credit",
    "current_balance",
    "current_balances",
    "debit_usage",
    "expire_holds",
    "get_balance",
    "get_balances",
    "grant_approved",
    "insufficient",
    "is_low",
    "lock_in_user_order",
    "lock_member_balances",
    "move_period_end",
    "open_balance",
    "opening_debit",
    "reapply_allocations",
    "release",
    "reserve",
    "resolve_allocation",
    "return_holds",
    "rolled_over_balances",
    "rollover_due",
    "settle",
    "settle_holds",
    "users_of",
]
