"""Calendar periods: where an hour, a day or a month starts in a time zone, and zone names.

Quotas, budgets, retention, alerts and reports all count "this hour", "today" and "this month"
with these functions, so the proxy, the CLI and the page agree on every boundary. Every function
takes and returns aware datetimes; boundaries are returned in UTC.
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo

UTC = zoneinfo.ZoneInfo("UTC")


class UnknownZone(ValueError):
    """A time zone name that is not an IANA zone; the text says what to use instead."""


# Files of the zone database that name no zone, in any of its directories (posix/Factory): the
# host's own setting (each host would count its own days), a template of rules, a placeholder.
_NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})


def zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        if name.rsplit("/", 1)[-1] in _NOT_ZONES:
            raise ValueError(name)
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise UnknownZone(f"unknown time zone {name!r}; use an IANA name such as UTC or America/Los_Angeles.") \
            from None


def hour_start(now: dt.datetime) -> dt.datetime:
    return now.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def day_start(now: dt.datetime, tz: zoneinfo.ZoneInfo) -> dt.datetime:
    local = now.astimezone(tz)
    return dt.datetime(local.year, local.month, local.day, tzinfo=tz).astimezone(dt.UTC)


def next_day_start(start: dt.datetime, tz: zoneinfo.ZoneInfo) -> dt.datetime:
    local = start.astimezone(tz).date() + dt.timedelta(days=1)
    return dt.datetime(local.year, local.month, local.day, tzinfo=tz).astimezone(dt.UTC)


def month_start(now: dt.datetime, tz: zoneinfo.ZoneInfo) -> dt.datetime:
    local = now.astimezone(tz)
    return dt.datetime(local.year, local.month, 1, tzinfo=tz).astimezone(dt.UTC)


def next_month_start(start: dt.datetime, tz: zoneinfo.ZoneInfo) -> dt.datetime:
    local = start.astimezone(tz)
    year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
    return dt.datetime(year, month, 1, tzinfo=tz).astimezone(dt.UTC)


def seconds_until(resets_at: dt.datetime, now: dt.datetime) -> int:
    """A retry-after value: whole seconds, rounded up, never less than 1."""
    return max(1, math.ceil((resets_at - now).total_seconds()))
