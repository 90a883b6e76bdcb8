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

from . import audit
from .periods import hour_start
from .plans import retention_days_for
from .store import lake, lifecycle, reading, writing
from .store.connection import is_shared


@dataclass(frozen=True)
class KeyRetention:
    """How long one key keeps raw calls, and who said so: what a purge explains per key."""

    key_id: int
    name: str
    plan: str
    days: int | None  # None: kept forever
    own: bool  # the key's own setting (`keys set-retention`), not its plan's

    @classmethod
    def of(cls, key_id: int, name: str, plan: str, own_days: int | None) -> KeyRetention:
        return cls(key_id, name, plan, retention_days_for(plan, own_days), own_days is not None)

    def keep(self, older_than: dt.timedelta | None) -> dt.timedelta | None:
        """How long its calls stay: its own days, shortened (never lengthened) by ``older_than``."""
        keep = dt.timedelta(days=self.days) if self.days is not None else None
        if older_than is not None:
            keep = older_than if keep is None else min(keep, older_than)
        return keep


@dataclass
class PurgeResult:
    keys: list[KeyRetention]
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


def cutoffs(keys: list[KeyRetention], now: dt.datetime,
            older_than: dt.timedelta | None) -> dict[int | None, dt.datetime]:
    found: dict[int | None, dt.datetime] = {}
    for key in keys:
        keep = key.keep(older_than)
        if keep is not None:
            found[key.key_id] = hour_start(now - keep)
    if older_than is not None:
        found[None] = hour_start(now - older_than)
    return found


def purge(db: Path, now: dt.datetime, older_than: dt.timedelta | None = None, dry_run: bool = False,
          audited: bool = True) -> PurgeResult:
    """``audited``: a purge asked for (the CLI, the API) is an audit entry; the proxy's daily one is not."""
    if dry_run:
        with reading(db) as con:
            keys = [KeyRetention.of(*row) for row in lifecycle.retention_settings(con)]
            limits = cutoffs(keys, now, older_than)
            return PurgeResult(keys, limits, lifecycle.expired_counts(con, limits), None)
    with writing(db) as con:
        keys = [KeyRetention.of(*row) for row in lifecycle.retention_settings(con)]
        limits = cutoffs(keys, now, older_than)
        purged, totals = lifecycle.purge(con, limits, now)
        if audited:
            audit.record(con, "purge", "calls", None, {"older_than_days": older_than.days if older_than else None,
                                                       "deleted": totals})
        if is_shared(con) and any(purged.values()):
            lake.scrub(con)  # the purged rows out of the lake's files too, as a GDPR erase does
        return PurgeResult(keys, limits, purged, totals)
