"""What a report or an export asks for, validated once for the CLI and the JSON API alike.

    spec = parse_report(["model", "day"], since="7d", tz="America/Los_Angeles")
    with store.reading(db) as con:
        groups, total = store_reports.report(con, spec)

Both front ends call these functions and the same queries in ``addon/core/store/reports.py``,
so they always agree.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass, replace

from . import periods
from .store import keys

TIME_DIMENSIONS = ("day", "hour", "month")
DIMENSIONS = ("model", "provider", "customer", "feature", "key", "team", *TIME_DIMENSIONS)
_RELATIVE = re.compile(r"^(\d{1,6})([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class ReportError(ValueError):
    """A request we cannot answer; the message says what to change."""


@dataclass(frozen=True)
class Selection:
    """Which calls: a time range [since, until) and optional filters."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    customer_id: str | None = None
    feature: str | None = None
    model: str | None = None
    key_id: int | None = None
    tz: str = "UTC"
    provider: str | None = None
    status: int | None = None  # an HTTP status, as recorded
    errors_only: bool = False  # failed calls only: what a report counts as errors
    team: str | None = None  # the calls of the keys now in this team (store/teams.py)
    teams: tuple[str, ...] | None = None  # a `team` role's limit: its teams' calls only (None: no limit)

    def for_key(self, key_id: int) -> Selection:
        """The same selection limited to one key's calls; asking for another key's is refused."""
        if self.key_id is not None and self.key_id != key_id:
            raise PermissionError(f"this key may only see its own calls (key {key_id}), not key {self.key_id}")
        return replace(self, key_id=key_id)

    def for_teams(self, teams: tuple[str, ...]) -> Selection:
        """The same selection limited to the calls of these teams' keys; naming another team is refused."""
        if self.team is not None and self.team not in teams:
            raise PermissionError(f"you may see the calls of team {', '.join(teams) or '(none)'} only, "
                                  f"not team {self.team!r}")
        return replace(self, teams=teams)


@dataclass(frozen=True)
class ReportSpec:
    by: tuple[str, ...]
    selection: Selection


def parse_selection(since: str | None = None, until: str | None = None, customer: str | None = None,
                    feature: str | None = None, model: str | None = None, key: str | int | None = None,
                    tz: str | None = None, now: dt.datetime | None = None, *, provider: str | None = None,
                    status: int | None = None, errors: bool = False, team: str | None = None) -> Selection:
    zone = parse_tz(tz or "UTC")
    now = now or dt.datetime.now(dt.UTC)
    start = parse_when(since, zone, now, "since") if since else None
    end = parse_when(until, zone, now, "until") if until else None
    if start and end and start >= end:
        raise ReportError(f"--since ({start:%Y-%m-%d %H:%M %Z}) must be before --until ({end:%Y-%m-%d %H:%M %Z}).")
    return Selection(since=start, until=end, customer_id=customer or None, feature=feature or None,
                     model=model or None, key_id=_key_id(key), tz=zone.key, provider=provider or None,
                     status=status, errors_only=errors, team=team or None)


def parse_report(by: list[str] | tuple[str, ...], **selection) -> ReportSpec:
    by = tuple(by) or ("model",)
    unknown = [d for d in by if d not in DIMENSIONS]
    if unknown:
        raise ReportError(f"unknown dimension {unknown[0]!r}; choose from {', '.join(DIMENSIONS)}.")
    if len(by) > 2 or len(set(by)) != len(by):
        raise ReportError("group by one or two different dimensions, e.g. --by model --by day.")
    return ReportSpec(by=by, selection=parse_selection(**selection))


def parse_tz(name: str) -> zoneinfo.ZoneInfo:
    try:
        return periods.zone(name)
    except periods.UnknownZone as exc:
        raise ReportError(str(exc)) from None


def parse_duration(value: str) -> dt.timedelta | None:
    """``30m``, ``24h``, ``7d`` or ``2w`` as a timedelta; None when ``value`` is none of those."""
    match = _RELATIVE.match(value.strip())
    return dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))}) if match else None


def parse_when(value: str, zone: zoneinfo.ZoneInfo, now: dt.datetime, name: str) -> dt.datetime:
    """``7d``/``24h``/``30m``/``2w`` ago, ``today``, a date (midnight in ``zone``) or an ISO time."""
    value = value.strip()
    try:
        if (ago := parse_duration(value)) is not None:
            return now - ago
    except OverflowError:
        raise ReportError(f"{name} {value!r} reaches past the year 1; use a shorter span or a date.") from None
    if value == "today":
        return periods.day_start(now, zone)
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ReportError(f"cannot read {name} {value!r}: use 7d, 24h, today, 2026-11-01 or "
                          f"2026-11-01T09:00.") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
        if len(value) > len("2026-11-01"):  # a time, not a date (whose day starts at fold 0's reading)
            _refuse_unclear_time(parsed, value, zone, name)
    try:
        return parsed.astimezone(dt.UTC)
    except OverflowError:  # 0001-01-01T00:00+14:00 is in the year 0 in UTC, 9999-12-31T23:00-05:00 in 10000
        raise ReportError(f"{name} {value!r} falls outside the years 1 to 9999 in UTC; give a time "
                          f"within them.") from None


def _refuse_unclear_time(local: dt.datetime, value: str, zone: zoneinfo.ZoneInfo, name: str) -> None:
    """A local time the clocks skip or show twice (a change to or from daylight saving time) names
    no one instant: refused with the offsets to say which, never read as one of them silently."""
    first, second = local.replace(fold=0), local.replace(fold=1)
    if first.utcoffset() == second.utcoffset():
        return
    later = first.astimezone(dt.UTC).astimezone(zone)  # fold 0's instant, as the clocks then showed it
    if later.replace(tzinfo=None) != local.replace(tzinfo=None):
        raise ReportError(f"{name} {value!r} does not exist in {zone.key}: the clocks skipped it (daylight saving "
                          f"time). Give a time that exists, or one with its UTC offset "
                          f"({later.isoformat(timespec='minutes')}).")
    raise ReportError(f"{name} {value!r} happens twice in {zone.key} (the clocks went back): give its UTC offset, "
                      f"{first.isoformat(timespec='minutes')} for the first or "
                      f"{second.isoformat(timespec='minutes')} for the second.")


def _key_id(key: str | int | None) -> int | None:
    if key is None or key == "":
        return None
    try:
        return keys.parse_id(key)
    except ValueError as exc:
        raise ReportError(str(exc)) from None
