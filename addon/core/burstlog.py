"""Logging refusals that come in floods: one line when they start, then a count per interval.

A flood of refused connections must not become a flood of log lines (one per connection filled
disks and hid everything else), and a single refusal must still show at once.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

LOG_INTERVAL = 10.0


class BurstLog:
    """One log line when refusals start, then one summary per LOG_INTERVAL while they go on."""

    def __init__(self, what: str, clock=time.monotonic):
        self.what, self.clock = what, clock
        self._quiet_until = 0.0
        self._unreported = 0
        self._lock = threading.Lock()  # the web port refuses from many threads at once

    def refused(self, detail: str) -> None:
        with self._lock:
            now = self.clock()
            if now < self._quiet_until:
                self._unreported += 1
                return
            self._quiet_until = now + LOG_INTERVAL
        log.warning("%s: %s (more are counted, and summarised every %.0f s)", self.what, detail, LOG_INTERVAL)

    def summarise(self) -> None:
        with self._lock:
            if not self._unreported or self.clock() < self._quiet_until:
                return
            count, self._unreported = self._unreported, 0
            self._quiet_until = self.clock() + LOG_INTERVAL
        log.warning("%s: %d more in the last %.0f s", self.what, count, LOG_INTERVAL)
