"""The proxy's time histograms of rollups summed before m032 (s023), filled in a day at a time.

m032 added each tier's ``proxy`` histogram (the time calls spent in our hooks) without filling it:
summing every call again in the migration took 24 GB in one transaction at 100M calls and was
killed. A row without one makes a report's p50/p99 of that time read the raw calls (1.9 s for a
year at 100M, against 30 ms from the histograms). So the owner's periodic jobs (evaluate.py) fill
them in here, oldest UTC day first, each day its own transaction:

- the 15-minute rows of that day whose calls are still raw are summed again from them
  (``rollups.rebuild``: exact, since a purge removes a key's calls by whole hours, so a 15-minute
  (bucket, key) pair's calls are all raw or all purged);
- the rows whose calls were purged get an empty histogram: their calls' times are gone, and the
  raw read a missing histogram falls back to would not find them either (the same answer);
- the coarser tiers' rows of that day are summed again from the 15-minute ones (``derive``); a
  week's row has its histogram once each of its days has.
"""

from __future__ import annotations

import datetime as dt

import duckdb

from . import rollups
from .connection import one
from .transaction import transaction

_EMPTY = "MAP {}::MAP(SMALLINT, BIGINT)"


def fill_oldest(con: duckdb.DuckDBPyConnection) -> dt.datetime | None:
    """Fill the oldest UTC day that has a 15-minute row without a proxy histogram, in a transaction
    of its own; that day, or None when no row is left without one."""
    with transaction(con):
        (oldest,) = one(con.execute("SELECT min(bucket) FROM rollups WHERE proxy IS NULL"))
        day = None if oldest is None else rollups.bucket_start(oldest, int(rollups.DAY.total_seconds()))
        if day is not None:
            _fill_day(con, day)
    return day


def _fill_day(con: duckdb.DuckDBPyConnection, day: dt.datetime) -> None:
    """Every tier's rows of the UTC ``day`` get their proxy histograms (see the module's docstring)."""
    end = day + rollups.DAY
    rollups.rebuild(con, "ts >= ? AND ts < ?", [day, end], derived=False)  # derived below, once
    con.execute(f"UPDATE rollups SET proxy = {_EMPTY} WHERE bucket >= ? AND bucket < ? AND proxy IS NULL",
                [day, end])
    day_pairs = "(SELECT bucket, key_id FROM rollups WHERE bucket >= ? AND bucket < ?)"
    for tier in rollups.DERIVED:
        rollups.derive(con, rollups.pairs(day_pairs, tier), tier, [day, end])
