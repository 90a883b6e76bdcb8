"""Since when the raw calls and the rollups hold the same calls (store/rollups.py).

Every write adds a call to both; only a purge makes them differ: retention deletes raw calls and
keeps their sums, and the rollups past lifecycle.HISTORY_DAYS go while raw calls of a key kept
forever stay. After this instant a range's raw rows give the rollups' answer, so a report over few
calls may scan them (reports.py: exact percentiles, and cheaper than merging histograms). Before
it, or with no instant known, reports read the rollups.

Stored in ``config`` (PostgreSQL in the shared mode, beside the purge that moves it); absent while
no purge ever removed anything.
"""

from __future__ import annotations

import datetime as dt

import duckdb

from . import rollups

SETTING = "raw_calls_complete_since"
EVER = dt.datetime.min.replace(tzinfo=dt.UTC)  # what `since` gives while raw rows and rollups agree throughout


def since(con: duckdb.DuckDBPyConnection) -> dt.datetime:
    from . import config  # imported here: the migrations that use this module come before connection.py's

    stored = config.get(con, SETTING)
    return EVER if stored is None else dt.datetime.fromisoformat(stored)


def move(con: duckdb.DuckDBPyConnection, to: dt.datetime, now: dt.datetime) -> None:
    """Before deleting rows older than ``to`` from one side: never back."""
    from . import config

    if to > since(con):
        config.put(con, SETTING, to.astimezone(dt.UTC).isoformat(), now)


# The end of the last 15-minute bucket whose rollups count other calls than its raw rows (NULL:
# none): for data purged before this instant was kept. An hour past it, as the totals kept before
# rollups existed (migrations.HOURLY_INTO_ROLLUPS) start on hours.
DIFFERING = f"""
    WITH r AS (SELECT bucket, sum(calls) AS n FROM rollups GROUP BY bucket),
         c AS (SELECT {rollups.bucket_sql()} AS bucket, count(*) AS n FROM calls GROUP BY ALL)
    SELECT max(bucket) + INTERVAL 1 HOUR FROM r FULL JOIN c USING (bucket) WHERE r.n IS DISTINCT FROM c.n
"""


def from_rollups(rows: duckdb.DuckDBPyConnection, control, now: dt.datetime) -> None:
    """Set the instant for data stored before it was kept (a migration's): from the rows of
    ``rows``, into the config table of ``control`` (the same connection in the embedded mode)."""
    (found,) = rows.execute(DIFFERING).fetchone()  # type: ignore[misc]
    if found is not None:
        move(control, found, now)
