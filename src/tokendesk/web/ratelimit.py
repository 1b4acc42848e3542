"""The login limiter: growing delays per (email, address), a rate per address.

Wrong passwords for one email from one address make that pair wait longer and
longer before its next try; nobody else is slowed by them, so a stranger who
knows someone's email cannot lock them out. Every attempt from an address,
right or wrong, spends from that address's allowance, which bounds how fast one
client can spray guesses over many emails. Memory is bounded: each table keeps
at most ``max_keys`` small entries and forgets the least recently used first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


@dataclass
class _Failures:
    count: int
    not_before: float
    last: float


@dataclass
class _Allowance:
    tokens: float
    updated: float


class LoginLimiter:
    def __init__(
        self,
        *,
        free_failures: int = 3,
        first_delay_seconds: float = 1.0,
        max_delay_seconds: float = 15 * 60,
        address_burst: int = 30,
        address_per_minute: float = 20,
        max_keys: int = 20_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.first_delay = first_delay_seconds
        self.max_delay = max_delay_seconds
        self.address_burst = address_burst
        self.refill_per_second = address_per_minute / 60
        self.max_keys = max_keys
        self.clock = clock
        self._failures: OrderedDict[tuple[str, str], _Failures] = OrderedDict()
        self._addresses: OrderedDict[str, _Allowance] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures) + len(self._addresses)

    def _delay(self, failures: int) -> float:
        over = failures - self.free_failures
        if over < 0:
            return 0.0
        return min(self.max_delay, self.first_delay * 2.0**over)

    def _pair(self, key: tuple[str, str], now: float) -> _Failures | None:
        entry = self._failures.get(key)
        # Failures long past are forgotten: the delay decays back to none.
        if entry is not None and now - entry.last > 2 * self.max_delay:
            del self._failures[key]
            return None
        return entry

    def _allowance(self, address: str, now: float) -> _Allowance:
        entry = self._addresses.get(address)
        if entry is None:
            entry = _Allowance(tokens=float(self.address_burst), updated=now)
        else:
            entry.tokens = min(
                float(self.address_burst),
                entry.tokens + (now - entry.updated) * self.refill_per_second,
            )
            entry.updated = now
        return entry

    def attempt(self, email: str, address: str) -> float:
        """Count one login attempt; 0 when it may go ahead, else the seconds to wait
        (a refused attempt costs nothing)."""
        now = self.clock()
        pair = self._pair((email, address), now)
        if pair is not None and pair.not_before > now:
            return pair.not_before - now
        allowance = self._allowance(address, now)
        if allowance.tokens < 1:
            return (1 - allowance.tokens) / self.refill_per_second
        allowance.tokens -= 1
        _remember(self._addresses, address, allowance, self.max_keys)
        return 0.0

    def failed(self, email: str, address: str) -> None:
        now = self.clock()
        key = (email, address)
        entry = self._pair(key, now) or _Failures(count=0, not_before=now, last=now)
        entry.count += 1
        entry.last = now
        entry.not_before = now + self._delay(entry.count)
        _remember(self._failures, key, entry, self.max_keys)

    def succeeded(self, email: str, address: str) -> None:
        self._failures.pop((email, address), None)


def _remember(table: OrderedDict[K, V], key: K, value: V, max_keys: int) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > max_keys:
        table.popitem(last=False)
