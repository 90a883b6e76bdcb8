"""Per-key request limits, checked in memory on the request path.

The hourly limit is a fixed window on the clock hour (UTC), not a sliding one: its reset time
is exact and the same for every caller, ``retry-after`` is simply the time to the next hour,
and after a restart the count is rebuilt from the stored calls of the current hour. The cost
is that a burst straddling the hour can reach twice the limit within a few minutes. The
monthly quota resets on the 1st at 00:00 in the configured time zone.

Counts are seeded from the store when the proxy starts (so a restart never grants a fresh
quota) and then kept here: one dict lookup and two comparisons per call, no database.
"""

from __future__ import annotations

import datetime as dt
import threading
import zoneinfo
from dataclasses import dataclass

from .host_counters import CountersFull, HostCounters
from .periods import hour_start, month_start, next_month_start, seconds_until
from .plans import Limits


@dataclass(frozen=True)
class Refusal:
    limit: str          # "per-hour" or "per-month"
    size: int
    used: int
    resets_at: dt.datetime

    def retry_after(self, now: dt.datetime) -> int:
        return seconds_until(self.resets_at, now)


class Limiter:
    def __init__(self, zone: zoneinfo.ZoneInfo):
        self.zone = zone
        self._limits: dict[int, Limits] = {}
        self._lock = threading.Lock()  # the writer thread seeds, the event loop counts
        self._hour = hour_start(dt.datetime.now(dt.UTC))
        self._month = month_start(dt.datetime.now(dt.UTC), zone)
        self._month_end = next_month_start(self._month, zone)
        self._hour_counts: dict[int, int] = {}
        self._month_counts: dict[int, int] = {}
        # A worker of the embedded mode counts in the host's shared counts instead (host_counters.py).
        self.host: HostCounters | None = None

    def set_limits(self, limits: dict[int, Limits]) -> None:
        self._limits = limits  # replaced whole: the request path reads it without the lock

    def seed(self, counts: dict[int, tuple[int, int]], now: dt.datetime) -> None:
        """Counts of calls already stored this hour and this month, per key (at start-up)."""
        with self._lock:
            self._hour, self._month = hour_start(now), month_start(now, self.zone)
            self._month_end = next_month_start(self._month, self.zone)
            self._hour_counts = {k: hour for k, (hour, _) in counts.items()}
            self._month_counts = {k: month for k, (_, month) in counts.items()}

    def limits_of(self, key_id: int) -> Limits | None:
        """The key's limits, None when it has neither an hourly limit nor a monthly quota."""
        limits = self._limits.get(key_id)
        return limits if limits is not None and (limits.per_hour is not None or limits.per_month is not None) else None

    def limited_keys(self) -> list[int]:
        return [key_id for key_id in self._limits if self.limits_of(key_id) is not None]

    def admit(self, key_id: int, now: dt.datetime) -> Refusal | None:
        """Count the call if it is within the key's limits; otherwise say which limit it hit."""
        limits = self._limits.get(key_id)
        if self.host is not None:
            hour, month = self.periods(now)
            try:
                return self.host.count_call(key_id, hour, month, lambda used, monthly: self._refusal(limits, used,
                                                                                                      monthly))
            except CountersFull:  # more keys than slots: this one counted by this process alone
                pass
        with self._lock:
            self._roll(now)
            hour_used = self._hour_counts.get(key_id, 0)
            month_used = self._month_counts.get(key_id, 0)
            refusal = self._refusal(limits, hour_used, month_used)
            if refusal is None:
                self._hour_counts[key_id] = hour_used + 1
                self._month_counts[key_id] = month_used + 1
            return refusal

    def periods(self, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
        """(this hour, this month) as the counters count them."""
        with self._lock:
            self._roll(now)
            return self._hour, self._month

    def observe(self, key_id: int, hour_used: int, month_used: int, now: dt.datetime) -> Refusal | None:
        """Take the counts kept elsewhere (all replicas, in shared storage) as this key's, so that if
        that storage goes away the local count goes on from there. Returns the refusal those counts
        mean for one more call, if any."""
        with self._lock:
            self._roll(now)
            self._hour_counts[key_id], self._month_counts[key_id] = hour_used, month_used
            return self._refusal(self._limits.get(key_id), hour_used, month_used)

    def _refusal(self, limits: Limits | None, hour_used: int, month_used: int) -> Refusal | None:
        if limits is None:
            return None
        if limits.per_month is not None and month_used >= limits.per_month:
            return Refusal("per-month", limits.per_month, month_used, self._month_end)
        if limits.per_hour is not None and hour_used >= limits.per_hour:
            return Refusal("per-hour", limits.per_hour, hour_used, self._hour + dt.timedelta(hours=1))
        return None

    def _roll(self, now: dt.datetime) -> None:
        if now - self._hour >= dt.timedelta(hours=1):
            self._hour, self._hour_counts = hour_start(now), {}
        if now >= self._month_end:  # the zone arithmetic runs once a month, not on every call
            self._month, self._month_counts = month_start(now, self.zone), {}
            self._month_end = next_month_start(self._month, self.zone)
