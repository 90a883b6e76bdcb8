"""Closed weeks of the 15-minute rollups rewritten in customer key order (issue 28).

The 15-minute tier is written as calls come, so one customer's rows are spread over every vector
of it: a report of one customer's year read the customer key of all its rows and then every other
column of each vector holding one of theirs (at 100M calls a year, the largest customer has a row
in every vector; the costs alone, DECIMAL(38,18), took 1.2 s to read). Merged per group and
written back ordered by customer key (``rollups.merge``), a week holds each customer's rows
together, and DuckDB's row group statistics skip the rest: one customer's weeks are read in a
few vectors each. Reports read a customer from this tier once the weeks of its range are in
order (``unordered_span``), and from the raw calls before (the lake's from the tier always:
reports._one_customer_from_tier).

The owner's periodic jobs (evaluate.py) order one week at a time, oldest first, an hour after it
ended (late rows, a spill replay or a slow writer, then add a few rows at the end of the table,
which every read sums alike; rows summed again, by a reprice or an erase, send the ordering back
to their week: ``reopen``). ``SETTING`` in ``config``: the start of the first week not yet
ordered. Embedded mode only: on the lake a week's DELETE conflicts with every replica's inserts
into the table (DuckLake checks per table), so its rows stay as written.
"""

from __future__ import annotations

import datetime as dt

import duckdb

from . import config, rollups
from .connection import is_shared, one
from .transaction import transaction

SETTING = "rollups_ordered_until"
_WEEK_S = int(rollups.WEEK.total_seconds())
SETTLE = dt.timedelta(hours=1)  # after a week ends, before it is ordered: the last flushes and spills land


def ordered_until(con: duckdb.DuckDBPyConnection) -> dt.datetime | None:
    """The start of the first week of the 15-minute tier not in customer order (None: none is, as
    on the lake, whatever setting `migrate-to` copied there from the file it came from)."""
    if is_shared(con):
        return None
    stored = config.get(con, SETTING)
    return None if stored is None else dt.datetime.fromisoformat(stored)


def order_oldest(con: duckdb.DuckDBPyConnection, now: dt.datetime) -> dt.datetime | None:
    """Put the oldest week not yet ordered into customer order, if it ended over SETTLE before
    ``now``: its rows of each tier naming customers (rollups.merge) and the setting, in one
    transaction, so that a reprice meanwhile either conflicts with it (the same rows) or sends
    the setting back after it (``reopen``); that week, or None when none is due."""
    done = ordered_until(con)
    (first,) = one(con.execute("SELECT min(bucket) FROM rollups" + (" WHERE bucket >= ?" if done else ""),
                               [done] if done else []))
    if first is None:
        return None
    week = rollups.bucket_start(first, _WEEK_S)
    if week + rollups.WEEK + SETTLE > now:
        return None
    with transaction(con):
        for tier in rollups.TIERS:
            if tier.keyed:  # the weekly customers' too: each writer merged its closed week in its own order
                rollups.merge(con, week, week + rollups.WEEK, tier)
        config.put(con, SETTING, (week + rollups.WEEK).isoformat(), now)
    return week


def unordered_span(con: duckdb.DuckDBPyConnection, since: dt.datetime | None,
                   until: dt.datetime | None) -> dt.timedelta | None:
    """How much of [since, until) (None: from the first call, up to now) lies in weeks not yet in
    customer order, up to now (None: all of it, no week being in order: the lake's case)."""
    done = ordered_until(con)
    if done is None:
        return None
    now = dt.datetime.now(dt.UTC)
    return max(min(until or now, now) - (done if since is None else max(since, done)), dt.timedelta(0))


def reopen(con: duckdb.DuckDBPyConnection, at: dt.datetime) -> None:
    """Rows of the bucket at ``at`` were summed again and appended out of customer order (a reprice,
    an erase, the proxy histograms' backfill: rollups.derive, after every rebuild): the ordering goes
    back to its week, and one customer's reports read the raw calls from there until it is done
    again. In the caller's transaction (the setting is in the same file)."""
    done = ordered_until(con)
    week = rollups.bucket_start(at, _WEEK_S)
    if done is not None and week < done:
        config.put(con, SETTING, week.isoformat(), dt.datetime.now(dt.UTC))
