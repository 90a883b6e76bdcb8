"""Per-key and per-team request limits, checked in memory on the request path.

The hourly limit is a fixed window on the clock hour (UTC), not a sliding one: its reset time
is exact and the same for every caller, ``retry-after`` is simply the time to the next hour,
and after a restart the count is rebuilt from the stored calls of the current hour. The cost
is that a burst straddling the hour can reach twice the limit within a few minutes. The
monthly quota resets on the 1st at 00:00 in the configured time zone.

Counts are seeded from the store when the proxy starts (so a restart never grants a fresh
quota) and then kept here: one dict lookup and two comparisons per call, no database.

A team's limits count the calls of all its keys together: a call is admitted only if both its key's
and its team's limits allow it, and a refused call counts in neither. Every call of a key in a team
is counted for that team, limited or not, so a limit given later starts from the right count.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import zoneinfo
from dataclasses import dataclass

from .host_counters import CountersFull, HostCounters
from .periods import hour_start, month_start, next_month_start, seconds_until
from .plans import Limits

_NOT_COUNTED = object()  # what refusing() tells the host's count: never count this one

@dataclass(frozen=True)
class Refusal:
    limit: str          # "per-hour" or "per-month"
    size: int
    used: int
    resets_at: dt.datetime
    team: str | None = None  # a team's limit, over other keys' calls too: its figures are not this key's

    def retry_after(self, now: dt.datetime) -> int:
        return seconds_until(self.resets_at, now)


@dataclass(frozen=True)
class Team:
    id: int
    name: str
    limits: Limits  # both None: the team has no limit (its calls are counted all the same)


def teams_of_keys(members: list[tuple[int, int, str, int | None, int | None]]) -> dict[int, Team]:
    """key id -> its team, from (key id, team id, name, per_hour, per_month) rows (store/teams.members)."""
    teams: dict[int, Team] = {}
    found = {}
    for key_id, team_id, name, per_hour, per_month in members:
        if team_id not in teams:
            teams[team_id] = Team(team_id, name, Limits(per_hour, per_month))
        found[key_id] = teams[team_id]
    return found


def team_counts(key_counts: dict[int, tuple[int, int]], key_teams: dict[int, int]) -> dict[int, tuple[int, int]]:
    """team id -> (calls this hour, calls this month) of its keys, from the keys' counts."""
    found: dict[int, tuple[int, int]] = {}
    for key_id, (hour, month) in key_counts.items():
        team_id = key_teams.get(key_id)
        if team_id is not None:
            before = found.get(team_id, (0, 0))
            found[team_id] = (before[0] + hour, before[1] + month)
    return found


def _limited(limits: Limits | None) -> Limits | None:
    return limits if limits is not None and (limits.per_hour is not None or limits.per_month is not None) else None


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
        self._teams: dict[int, Team] = {}  # key id -> its team
        self._team_hour_counts: dict[int, int] = {}
        self._team_month_counts: dict[int, int] = {}
        # A worker of the embedded mode counts in the host's shared counts instead (host_counters.py).
        self.host: HostCounters | None = None

    def set_limits(self, limits: dict[int, Limits], teams: dict[int, Team] | None = None) -> None:
        """Each key's limits, and the team of each key in one (``keys move`` takes effect here)."""
        # Each replaced whole: the request path reads them without the lock.
        self._limits = limits
        self._teams = teams or {}

    def seed(self, counts: dict[int, tuple[int, int]], now: dt.datetime,
             teams: dict[int, tuple[int, int]] | None = None) -> None:
        """Counts of calls already stored this hour and this month, per key and per team (at start-up)."""
        teams = teams or {}
        with self._lock:
            self._hour, self._month = hour_start(now), month_start(now, self.zone)
            self._month_end = next_month_start(self._month, self.zone)
            self._hour_counts = {k: hour for k, (hour, _) in counts.items()}
            self._month_counts = {k: month for k, (_, month) in counts.items()}
            self._team_hour_counts = {t: hour for t, (hour, _) in teams.items()}
            self._team_month_counts = {t: month for t, (_, month) in teams.items()}

    def limits_of(self, key_id: int) -> Limits | None:
        """The key's limits, None when it has neither an hourly limit nor a monthly quota."""
        return _limited(self._limits.get(key_id))

    def team_of(self, key_id: int) -> Team | None:
        """The key's team when that team has a limit (None: in no team, or in one without limits)."""
        team = self._teams.get(key_id)
        return team if team is not None and _limited(team.limits) is not None else None

    def limited(self, key_id: int) -> bool:
        """Whether the key's calls are limited at all, by its own limits or its team's."""
        return self.limits_of(key_id) is not None or self.team_of(key_id) is not None

    def limited_keys(self) -> list[int]:
        return [key_id for key_id in self._limits if self.limits_of(key_id) is not None]

    def limited_teams(self) -> dict[int, list[int]]:
        """team id -> its keys, for the teams with a limit."""
        found: dict[int, list[int]] = {}
        for key_id, team in self._teams.items():
            if _limited(team.limits) is not None:
                found.setdefault(team.id, []).append(key_id)
        return found

    def admit(self, key_id: int, now: dt.datetime) -> Refusal | None:
        """Count the call if it is within its key's and its team's limits; otherwise say which limit it hit."""
        return self._decide(key_id, now, count=True)

    def refusing(self, key_id: int, now: dt.datetime) -> Refusal | None:
        """The refusal one more call of the key would get, counting nothing (the shared mode's: from
        the counts last seen): when a budget refuses too, the one that lasts longer is the answer."""
        return self._decide(key_id, now, count=False)

    def _decide(self, key_id: int, now: dt.datetime, count: bool) -> Refusal | None:
        limits, team = self._limits.get(key_id), self._teams.get(key_id)
        if self.host is not None:
            hour, month = self.periods(now)
            found: list[Refusal | None] = []

            def refusal(*used: int) -> object:
                found.append(self._refusal_both(limits, team, *used))
                return found[0] if count else _NOT_COUNTED  # the host counts the call when this is None
            try:
                self.host.count_call(key_id, hour, month, refusal, team.id if team else None)
                return found[0]
            except CountersFull:  # more keys (or teams) than slots: this one counted by this process alone
                pass
        with self._lock:
            self._roll(now)
            hour_used = self._hour_counts.get(key_id, 0)
            month_used = self._month_counts.get(key_id, 0)
            team_hour, team_month = ((self._team_hour_counts.get(team.id, 0), self._team_month_counts.get(team.id, 0))
                                     if team is not None else (0, 0))
            found_here = self._refusal_both(limits, team, hour_used, month_used, team_hour, team_month)
            if found_here is None and count:
                if team is not None:
                    self._team_hour_counts[team.id], self._team_month_counts[team.id] = team_hour + 1, team_month + 1
                self._hour_counts[key_id] = hour_used + 1
                self._month_counts[key_id] = month_used + 1
            return found_here

    def periods(self, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
        """(this hour, this month) as the counters count them."""
        with self._lock:
            self._roll(now)
            return self._hour, self._month

    def observe(self, key_id: int, hour_used: int, month_used: int, now: dt.datetime,
                team_used: tuple[int, int] | None = None) -> Refusal | None:
        """Take the counts kept elsewhere (all replicas, in shared storage) as this key's (and, given,
        its team's), so that if that storage goes away the local count goes on from there. Returns the
        refusal those counts mean for one more call, if any."""
        team = self._teams.get(key_id)
        with self._lock:
            self._roll(now)
            self._hour_counts[key_id], self._month_counts[key_id] = hour_used, month_used
            if team is None or team_used is None:
                return self._refusal(self._limits.get(key_id), hour_used, month_used)
            self._team_hour_counts[team.id], self._team_month_counts[team.id] = team_used
            return self._refusal_both(self._limits.get(key_id), team, hour_used, month_used, *team_used)

    def _refusal_both(self, limits: Limits | None, team: Team | None, hour_used: int, month_used: int,
                      team_hour: int, team_month: int) -> Refusal | None:
        """Of the key's own limits and its team's, the refusal that lasts longest: a call is accepted
        only once both allow it (retry-after said the key's hour while the team's month still refused).
        Of two that end together, the key's: its figures are its own."""
        own = self._refusal(limits, hour_used, month_used)
        theirs = self._team_refusal(team, team_hour, team_month) if team is not None else None
        if own is None or theirs is None:
            return own or theirs
        return theirs if theirs.resets_at > own.resets_at else own

    def _team_refusal(self, team: Team, hour_used: int, month_used: int) -> Refusal | None:
        refusal = self._refusal(team.limits, hour_used, month_used)
        return dataclasses.replace(refusal, team=team.name) if refusal is not None else None

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
            self._hour, self._hour_counts, self._team_hour_counts = hour_start(now), {}, {}
        if now >= self._month_end:  # the zone arithmetic runs once a month, not on every call
            self._month, self._month_counts, self._team_month_counts = month_start(now, self.zone), {}, {}
            self._month_end = next_month_start(self._month, self.zone)
