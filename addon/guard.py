"""Slows down key guessing: too many refused keys from one client address earn a 429.

Keys carry 256 random bits, so guessing cannot succeed; the guard is there so a misbehaving or
hostile client cannot fill the log and the request path with 401s. It counts per address in a
fixed window. Once an address is over, its calls without a valid key get 429 instead of 401
until the window ends. A call with a valid key is never refused: behind a NAT or a load balancer
many clients share one address, and one neighbour's keyless calls must not lock out the rest.
(That a valid key passes where a wrong one gets 429 tells a guesser nothing usable: there are
2^256 keys to try.) The allowance is an option; 0 turns the guard off.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

# The table is pruned when it grows past this, so a flood of addresses cannot grow memory.
_MAX_ADDRESSES = 50_000


class AuthGuard:
    def __init__(self, allowed: int = 30, window: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.allowed, self.window, self.clock = allowed, window, clock
        self._failures: dict[str, tuple[float, int]] = {}  # address -> (window start, failures)

    def wait(self, address: str) -> int | None:
        """Whole seconds until ``address`` may try again, or None when it is not blocked."""
        entry = self._failures.get(address)
        if entry is None or self.allowed <= 0:
            return None
        started, count = entry
        remaining = started + self.window - self.clock()
        if remaining <= 0:
            del self._failures[address]
            return None
        return math.ceil(remaining) if count >= self.allowed else None

    def failed(self, address: str) -> None:
        if self.allowed <= 0:
            return
        now = self.clock()
        started, count = self._failures.get(address, (now, 0))
        if now - started >= self.window:
            started, count = now, 0
        if len(self._failures) >= _MAX_ADDRESSES and address not in self._failures:
            self._prune(now)
        self._failures[address] = (started, count + 1)

    def _prune(self, now: float) -> None:
        live = {a: e for a, e in self._failures.items() if now - e[0] < self.window}
        # Still full of live entries: keep the blocked ones, which are the ones that matter.
        if len(live) >= _MAX_ADDRESSES:
            live = {a: e for a, e in live.items() if e[1] >= self.allowed}
        self._failures = live
