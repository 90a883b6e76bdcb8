"""Settings the proxy, the CLI and the web app must agree on, stored in the database.

Today one: ``quota_tz``, the time zone of the days and months that quotas and budgets count. The
proxy counts "today" in it, so ``aispendtrack budgets list``, ``keys list`` and the API must too;
a setting held by one process's flags could not give them the same answer.
"""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo

from . import periods
from .store import config as config_rows

log = logging.getLogger(__name__)

QUOTA_TZ = "quota_tz"
DEFAULTS = {QUOTA_TZ: "UTC"}


def quota_zone(con) -> zoneinfo.ZoneInfo:
    """The stored quota time zone (UTC until one is set). One an older version took that names no
    zone (``localtime``: each host its own) is read as UTC, with a warning."""
    stored = config_rows.get(con, QUOTA_TZ) or DEFAULTS[QUOTA_TZ]
    try:
        return periods.zone(stored)
    except periods.UnknownZone as exc:
        if stored not in _WARNED:  # read on every key refresh: said once per process
            _WARNED.add(stored)
            log.warning("the stored quota time zone: %s Counting in UTC until one is set (aispendtrack config "
                        "set quota-tz ZONE).", exc)
        return periods.UTC


_WARNED: set[str] = set()


def set_quota_zone(con, name: str) -> zoneinfo.ZoneInfo:
    """Validate and store; raises periods.UnknownZone with a message for the user."""
    zone = periods.zone(name)
    config_rows.put(con, QUOTA_TZ, zone.key, dt.datetime.now(dt.UTC))
    return zone


def values(con) -> dict[str, str]:
    stored = {name: value for name, (value, _) in config_rows.all_values(con).items()}
    return {**DEFAULTS, **stored}
