"""Which raw calls have outlived their key's retention, and purging them (daily, and on demand).

Each key keeps raw calls for its own ``retention_days`` or, when unset, its plan's (7 days on
free, 90 on pro, forever on enterprise). ``older_than`` (from ``aispendtrack purge --older-than``)
shortens that for every key, never lengthens it. Cutoffs are whole UTC hours, so a purged hour
is rolled up whole and never also counted from raw rows.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from .periods import hour_start
from .plans import retention_days_for
from .store import lake, lifecycle, reading, writing
from .store.connection import is_shared


@dataclass
class PurgeResult:
    cutoffs: dict[int | None, dt.datetime]
    expired: dict[int | None, int]  # raw calls past their cutoff, per key
    deleted: dict[str, int] | None  # None on a dry run


# The longest --older-than / older_than_days: 100 years reach back past any call ever recorded,
# and a longer span would reach before the year 1, which no date can hold.
MAX_OLDER_THAN_DAYS = 36_500


def check_older_than(span: dt.timedelta) -> dt.timedelta:
    """``span`` if it is a usable purge age; ValueError says the allowed range."""
    if not dt.timedelta(0) < span <= dt.timedelta(days=MAX_OLDER_THAN_DAYS):
        raise ValueError(f"the age to purge must be more than 0 and at most {MAX_OLDER_THAN_DAYS:,} days (100 years).")
    return span


def cutoffs(keys: list[tuple[int, str, int | None]], now: dt.datetime,
            older_than: dt.timedelta | None) -> dict[int | None, dt.datetime]:
    found: dict[int | None, dt.datetime] = {}
    for key_id, plan, own_days in keys:
        days = retention_days_for(plan, own_days)
        keep = dt.timedelta(days=days) if days is not None else None
        if older_than is not None:
            keep = older_than if keep is None else min(keep, older_than)
        if keep is not None:
            found[key_id] = hour_start(now - keep)
    if older_than is not None:
        found[None] = hour_start(now - older_than)
    return found


def purge(db: Path, now: dt.datetime, older_than: dt.timedelta | None = None, dry_run: bool = False) -> PurgeResult:
    if dry_run:
        with reading(db) as con:
            limits = cutoffs(lifecycle.retention_settings(con), now, older_than)
            return PurgeResult(limits, lifecycle.expired_counts(con, limits), None)
    with writing(db) as con:
        limits = cutoffs(lifecycle.retention_settings(con), now, older_than)
        purged, totals = lifecycle.purge(con, limits, now)
        if is_shared(con) and any(purged.values()):
            lake.scrub(con)  # the purged rows out of the lake's files too, as a GDPR erase does
        return PurgeResult(limits, purged, totals)
