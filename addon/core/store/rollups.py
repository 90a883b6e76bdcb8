"""SQL for ``rollups``: the calls summed per 15-minute bucket and tag combination (issue 28).

Why 15 minutes: every report groups by hour, day or month in some IANA zone, and today's zones are
offset from UTC by whole quarter hours (India +5:30, Nepal +5:45, Chatham +12:45) and switch
offsets on quarter hours, so every local hour, day and month starts on a UTC quarter hour: a
bucket never straddles two groups. (Hourly buckets would cut a day in Kolkata in half.) A zone
whose offset is not whole quarter hours (local mean times before ~1970) makes a report over that
range read raw rows (``aligned``).

One row per (bucket, key, customer, feature, provider, model, status, failed) per write: the
writer's insert adds the rows it stores (``DELTA``), in the same transaction, so rollups and raw
rows always agree, late rows included. Several rows for one group simply add up in every read;
``compact`` merges them. A purge deletes raw rows and keeps these; a GDPR erase deletes the
subject's rows here too; ``reprice`` rebuilds the buckets whose costs it changed.

``rollups_hourly`` and ``rollups_daily``: the same sums per UTC hour and per UTC day without
``customer_id`` and ``feature`` (issue 28): with about one 15-minute row per call on real tag
spreads, reports that neither group nor filter by customer or feature read these far smaller
tiers (reports.py picks the coarsest the zone allows: whole days of offset, i.e. UTC, for the
daily one, whole hours for the hourly one). They are written beside ``rollups`` by every writer
above. Neither can tell a customer's calls apart, nor (a day) a purge's: an erase and a reprice
sum their affected (bucket, key) pairs again from the 15-minute rows (``derive``), so every tier
keeps agreeing with a raw scan. The open bucket of a coarse tier gains a row per group per flush
until it closes (a day: 86,400 flushes): it is merged each time a 15-minute bucket closes.

``rollups_customers`` and ``rollups_features``: the same sums per UTC week and one tag alone
(``CUSTOMERS``, ``FEATURES``): what a report by customer or feature reads over a long range;
``rollups_models``, per UTC day and model alone; ``rollups_total_days``, per UTC day with no tag
(``TOTAL_DAYS``): what a report with no groups, or by day, reads. Without keys, an erase or a reprice
sums their whole buckets again.

Latency: a mergeable histogram, bin ``b`` holding latencies in (G^(b-1), G^b] with G = (1+A)/(1-A),
A = 0.0099. Each bin stands for 2*G^b/(G+1), within A (0.99%) of every latency in it; a
percentile is the interpolation quantile_cont makes, between the bins of the two ranks it reads,
so it too is within 0.99% of the exact one (before rounding to the microsecond). Zero (or a
negative clock step) has bin ``ZERO_BIN``, standing for 0.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import duckdb

from .calls import CUSTOMER_KEY_COLUMN, UNIT_NAMES, UNPRICED, customer_key_sql
from .errors import StoreBusy
from .transaction import transaction

BUCKET = dt.timedelta(minutes=15)
_BUCKET_S = int(BUCKET.total_seconds())
RELATIVE_ERROR = 0.0099
GROWTH = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
ZERO_BIN = -32768
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
WEEK = dt.timedelta(days=7)
DIMENSIONS = ("key_id", "customer_id", "feature", "provider", "model", "status", "failed")
HOURLY_DIMENSIONS = ("key_id", "provider", "model", "status", "failed")
HOURLY = "rollups_hourly"
DAILY_TABLE = "rollups_daily"
COUNTS = ["calls", "errors", "unpriced_calls", "unmetered_calls", "estimated_calls"]
SUMS = ["input_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens", "output_tokens",
        "reasoning_tokens", "web_search_requests", *UNIT_NAMES]
_SUM_TYPE = {"audio_seconds": "DECIMAL(38, 3)"}


def sum_type(column: str) -> str:
    """The type of a summed column in every tier."""
    return _SUM_TYPE.get(column, "BIGINT")
FAILED = "(status >= 400 OR outcome <> 'completed')"  # reports.FAILED
# Latency (ms) and the time in the proxy's hooks (proxy_us, µs): histograms of the same bins.
HISTOGRAMS = ("latency", "proxy")

_DDL = """
    CREATE TABLE IF NOT EXISTS {table} (
        bucket TIMESTAMPTZ NOT NULL,      -- start of a UTC bucket of the tier's width (store/rollups.py)
        {tags}
        {counts},
        {sums},
        cost_usd DECIMAL(38, 18),         -- NULL when no call of the row was priced, as sum() is
        latency MAP(SMALLINT, BIGINT),    -- histogram bin -> calls (store/rollups.py)
        proxy MAP(SMALLINT, BIGINT){more}  -- the same of proxy_us; NULL: rows summed before m032
    )
"""
_TAG_TYPES = {"key_id": "INTEGER", "customer_id": "VARCHAR", "feature": "VARCHAR", "provider": "VARCHAR NOT NULL",
              "model": "VARCHAR",
              "status": "INTEGER",  # the HTTP status; NULL for totals kept from hourly_usage
              "failed": "BOOLEAN"}  # what reports count as an error; NULL as status
_COLUMNS = {"counts": ", ".join(f"{c} BIGINT NOT NULL" for c in COUNTS),
            "sums": ", ".join(f"{c} {_SUM_TYPE.get(c, 'BIGINT')}" for c in SUMS)}


def _ddl(table: str, dimensions: tuple[str, ...], more: str = "") -> str:
    return _DDL.format(table=table, tags=" ".join(f"{d} {_TAG_TYPES[d]}," for d in dimensions), more=more,
                       **_COLUMNS)


def bin_sql(column: str = "latency_ms") -> str:
    return (f"CASE WHEN {column} IS NULL THEN NULL WHEN {column} <= 0 THEN {ZERO_BIN} "
            f"ELSE ceil(ln({column}) / {math.log(GROWTH)!r})::SMALLINT END")


def bin_value(b: int) -> float:
    return 0.0 if b == ZERO_BIN else 2 * GROWTH ** b / (GROWTH + 1)


@dataclass(frozen=True)
class Tier:
    table: str
    seconds: int
    dimensions: tuple[str, ...]
    sparse: bool = False  # about one call per histogram bin: percentiles from raw rows (reports.py)

    @property
    def ddl(self) -> str:
        """The table as its migration created it: without the customer key (``key_ddl``)."""
        return _ddl(self.table, self.dimensions)

    @property
    def keyed(self) -> bool:
        return "customer_id" in self.dimensions

    @property
    def key_ddl(self) -> list[str]:
        """The customer key's column (calls.CUSTOMER_KEY_COLUMN) of a tier naming customers: the
        rows of one customer are found by comparing integers, then their text (reports.py), where
        the text alone was decompressed in every row (a customer's total over the weekly tier of
        100,000 customers, 5.3M rows: 40 ms)."""
        return [CUSTOMER_KEY_COLUMN.format(table=self.table)] if self.keyed else []

    @property
    def whole_ddl(self) -> str:
        """The table with the customer key at once (a new lake: one schema version, not two)."""
        return _ddl(self.table, self.dimensions, ", customer_key INTEGER" if self.keyed else "")


FINE = Tier("rollups", _BUCKET_S, DIMENSIONS, sparse=True)
COARSE = Tier(HOURLY, int(HOUR.total_seconds()), HOURLY_DIMENSIONS)
DAILY = Tier(DAILY_TABLE, int(DAY.total_seconds()), HOURLY_DIMENSIONS)
# One tag alone per week (issue 28): a report by customer or by feature over a long range reads a
# row per customer (feature) and week, not ~one per call as the 15-minute tier holds. Weeks, not
# days: a year of 100,000 customers has ~27M (day, customer) pairs but ~5M (week, customer) ones.
# Buckets start on Thursdays (the epoch's weekday), UTC; a range's edges come from the finer tiers
# that name what the report does (reports._finer_source: the 15-minute one for a customer's, the
# totals' days for a total). A customer's week holds about one call per histogram bin (sparse); a
# feature's many.
CUSTOMERS = Tier("rollups_customers", int(WEEK.total_seconds()), ("customer_id",), sparse=True)
FEATURES = Tier("rollups_features", int(WEEK.total_seconds()), ("feature",))
# The same per UTC day and model alone: reports by model, provider or day (model x day at 100M calls:
# a few thousand rows, where the daily tier has a row per key, status and model).
MODELS = Tier("rollups_models", int(DAY.total_seconds()), ("provider", "model"))
# The whole selection's sums per UTC day, no tag at all (issue 28): what a total or a report by day
# reads, 365 rows a year. From the features' weeks and the models' days at a range's edges, the
# histograms of a year at 100M calls were ~800,000 bins, where the Parquet reader decodes every row
# of a row group it reads: the lake's total of a year took 76-82 ms, most of it those scans. Days,
# not weeks: a year's days are one scan, where weeks and their edges' days were three, each ~6-9 ms
# of DuckLake's catalog queries (docs/benchmarks.md, "The totals' days").
TOTAL_DAYS = Tier("rollups_total_days", int(DAY.total_seconds()), ())
BEFORE_NARROW = (FINE, COARSE, DAILY)  # the tiers before the narrow ones (m031)
BEFORE_TOTALS = (FINE, COARSE, MODELS, DAILY, FEATURES, CUSTOMERS)  # the tiers before the totals (m035)
TIERS = (FINE, COARSE, TOTAL_DAYS, MODELS, DAILY, FEATURES, CUSTOMERS)
DERIVED = TIERS[1:]  # the tiers summed again from the 15-minute rows when theirs cannot be picked out
DDL, HOURLY_DDL, DAILY_DDL = FINE.ddl, COARSE.ddl, DAILY.ddl


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def bucket_start(at: dt.datetime, seconds: int) -> dt.datetime:
    """The start of the ``seconds``-wide UTC bucket ``at`` is in. In whole microseconds (a float of
    the time rounded 9999-12-31 23:59:59.999999 up to the year 10000); OverflowError for a bucket
    that starts before the year 1."""
    width = dt.timedelta(seconds=seconds)
    return _EPOCH + (at - _EPOCH) // width * width


def bucket_after(at: dt.datetime, seconds: int) -> dt.datetime:
    """The first bucket start at or after ``at`` (OverflowError past the year 9999)."""
    width = dt.timedelta(seconds=seconds)
    return _EPOCH - (_EPOCH - at) // width * width


def insert(tier: Tier, select: str) -> str:
    """The INSERT of the rows ``select`` yields (``tier``'s columns by name, as ``aggregate`` and
    ``merged`` give them) into ``tier``, with their customer key where it has one (``key_ddl``).
    By name, so that a lake step adding a nullable column to a tier leaves this version writing
    (a replica before these inserts wrote by position, and fails once a tier has a column more)."""
    if not tier.keyed:
        return f"INSERT INTO {tier.table} BY NAME {select}"
    key = customer_key_sql("customer_id")
    return f"INSERT INTO {tier.table} BY NAME SELECT *, {key} AS customer_key FROM ({select})"


def bucket_sql(column: str = "ts", seconds: int = _BUCKET_S) -> str:
    return f"to_timestamp(floor(epoch({column}) / {seconds}) * {seconds})"


def aggregate(source: str, tier: Tier = FINE) -> str:
    """Rows of ``tier`` (table order) of the calls that ``source`` (a SELECT of calls' columns) yields."""
    sums = ", ".join(f"sum({c})::{_SUM_TYPE.get(c, 'BIGINT')} AS {c}" for c in SUMS)
    tags = "".join(f"coalesce({FAILED}, false) AS failed, " if d == "failed" else f"{d}, " for d in tier.dimensions)
    return f"""
        SELECT {bucket_sql(seconds=tier.seconds)} AS bucket, {tags}count(*) AS calls,
               count(*) FILTER (WHERE {FAILED}) AS errors,
               count(*) FILTER (WHERE {UNPRICED}) AS unpriced_calls,
               count(*) FILTER (WHERE usage_source = 'unmetered') AS unmetered_calls,
               count(*) FILTER (WHERE usage_source IN ('estimated', 'partial')) AS estimated_calls,
               {sums}, sum(cost_usd) AS cost_usd,
               histogram({bin_sql()})::MAP(SMALLINT, BIGINT) AS latency,
               -- empty, not NULL, for calls without proxy_us (a batch's results): NULL says "not summed"
               coalesce(histogram({bin_sql('proxy_us')}), MAP {{}})::MAP(SMALLINT, BIGINT) AS proxy
        FROM ({source}) s GROUP BY ALL"""


def merged(source: str, tier: Tier) -> str:
    """One row of ``tier`` (table order) per group of the rollup rows ``source`` yields (their
    ``bucket`` already on ``tier``'s edges): sums added, histograms merged bin by bin."""
    group = ", ".join(["bucket", *tier.dimensions])
    sums = ", ".join(f"sum({c})::{'BIGINT' if c in COUNTS else _SUM_TYPE.get(c, 'BIGINT')} AS {c}"
                     for c in [*COUNTS, *SUMS])
    same = " AND ".join(f"sums.{c} IS NOT DISTINCT FROM {{h}}.{c}" for c in ["bucket", *tier.dimensions])
    merges = "".join(f""",
        bins_{h} AS (SELECT {group}, b, sum(n)::BIGINT AS n FROM
                       (SELECT {group}, unnest(map_keys({h})) AS b, unnest(map_values({h})) AS n FROM r)
                     GROUP BY ALL HAVING sum(n) > 0),
        hist_{h} AS (SELECT {group}, map(list(b ORDER BY b), list(n ORDER BY b)) AS {h} FROM bins_{h} GROUP BY ALL)"""
                     for h in HISTOGRAMS)
    # A row without a proxy histogram (summed before m032) makes the merged one have none: a
    # histogram of part of the calls would pass for all of them.
    return f"""
        WITH r AS ({source}),
        sums AS (SELECT {group}, {sums}, sum(cost_usd) AS cost_usd, bool_or(proxy IS NULL) AS proxy_missing
                 FROM r GROUP BY ALL){merges}
        SELECT {", ".join(f"sums.{c}" for c in ["bucket", *tier.dimensions, *COUNTS, *SUMS, "cost_usd"])},
               coalesce(hist_latency.latency, MAP {{}}::MAP(SMALLINT, BIGINT)) AS latency,
               CASE WHEN NOT proxy_missing THEN coalesce(hist_proxy.proxy, MAP {{}}::MAP(SMALLINT, BIGINT)) END
                 AS proxy
        FROM sums {" ".join(f"LEFT JOIN hist_{h} ON {same.format(h=f'hist_{h}')}" for h in HISTOGRAMS)}"""


def _columns(tier: Tier, prefix: str = "") -> str:
    """``tier``'s columns but ``bucket``, as the 15-minute rows (``prefix``: their alias) hold them."""
    return ", ".join(f"{prefix}{c}" for c in [*tier.dimensions, *COUNTS, *SUMS, "cost_usd", *HISTOGRAMS])


def rebuild(con: duckdb.DuckDBPyConnection, condition: str, params: list, derived: bool = True,
            kept: bool = False) -> None:
    """Replace the 15-minute rows of each (bucket, key) pair of the raw calls matching ``condition``
    by sums of those pairs' raw rows, plus what those rows held beyond them (``keep_remainders``;
    given ``kept``, the caller took it before changing the calls), then (``derived``) the coarser
    tiers' rows of those pairs from the 15-minute rows (``derive``). A purge removes a key's calls
    by whole hours, so a pair's calls are all raw or all purged, unless a late row (a spill replayed
    days later) landed in a purged hour: that pair's purged calls live on only in its rows. Run
    inside the caller's transaction."""
    if not kept:
        keep_remainders(con, condition, params)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE rebuilt_buckets AS
        SELECT DISTINCT {bucket_sql()} AS bucket, key_id FROM calls WHERE {condition}""", params)
    con.execute("DELETE FROM rollups USING rebuilt_buckets p "
                "WHERE rollups.bucket = p.bucket AND coalesce(rollups.key_id, -1) = coalesce(p.key_id, -1)")
    con.execute(insert(FINE, aggregate(
        f"SELECT c.* FROM calls c JOIN rebuilt_buckets p ON {bucket_sql('c.ts')} = p.bucket "
        f"AND coalesce(c.key_id, -1) = coalesce(p.key_id, -1)")))
    con.execute(insert(FINE, "SELECT * FROM rollup_remainders"))
    for tier in DERIVED if derived else ():
        derive(con, pairs("rebuilt_buckets", tier), tier)
    con.execute("DROP TABLE rebuilt_buckets")
    con.execute("DROP TABLE rollup_remainders")


def keep_remainders(con: duckdb.DuckDBPyConnection, condition: str, params: list) -> None:
    """Into the temp table rollup_remainders, for ``rebuild``: of the (bucket, key) pairs of the raw
    calls matching ``condition``, what their 15-minute rows sum beyond their raw calls (purged
    calls' sums, where a late row was stored after the purge): the rows with the raw calls' sums
    taken off, groups and histogram bins left with no call (or fewer, where rows went missing)
    dropped. Taken before the calls change (a reprice's UPDATE). Where the purged calls of a group
    had no known cost and its raw calls had, the remainder's cost is 0, not NULL (its unpriced
    count still says so)."""
    pair = "coalesce({0}.key_id, -1) = p.key_id"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE remainder_pairs AS
        WITH p AS (SELECT DISTINCT {bucket_sql()} AS bucket, coalesce(key_id, -1) AS key_id
                   FROM calls WHERE {condition}),
             raw AS (SELECT p.bucket, p.key_id, count(*) AS n FROM calls c
                     JOIN p ON {bucket_sql('c.ts')} = p.bucket AND {pair.format('c')} GROUP BY ALL),
             rolled AS (SELECT p.bucket, p.key_id, sum(r.calls) AS n FROM rollups r
                        JOIN p ON r.bucket = p.bucket AND {pair.format('r')} GROUP BY ALL)
        SELECT bucket, key_id FROM rolled JOIN raw USING (bucket, key_id) WHERE rolled.n > raw.n""", params)
    negated = ", ".join(["bucket", *FINE.dimensions, *(f"-{c} AS {c}" for c in [*COUNTS, *SUMS, "cost_usd"]),
                         *(f"map_from_entries(list_transform(map_entries({h}), e -> {{'k': e.key, 'v': -e.value}})) "
                           f"AS {h}" for h in HISTOGRAMS)])
    raw_rows = aggregate(f"SELECT c.* FROM calls c JOIN remainder_pairs p ON {bucket_sql('c.ts')} = p.bucket "
                         f"AND {pair.format('c')}")
    rows = (f"SELECT r.* EXCLUDE (customer_key) FROM rollups r JOIN remainder_pairs p ON r.bucket = p.bucket "
            f"AND {pair.format('r')} UNION ALL BY NAME SELECT {negated} FROM ({raw_rows})")
    con.execute(f"CREATE OR REPLACE TEMP TABLE rollup_remainders AS "
                f"SELECT * FROM ({merged(rows, FINE)}) WHERE calls > 0")
    con.execute("DROP TABLE remainder_pairs")


def pairs(table: str, tier: Tier) -> str:
    """The (bucket of ``tier``, key) pairs of ``table``'s 15-minute (bucket, key_id) pairs, as
    ``derive`` takes them (key -1 for a tier without keys: its whole buckets)."""
    key = "coalesce(key_id, -1)" if "key_id" in tier.dimensions else "-1"
    return f"SELECT DISTINCT {bucket_sql('bucket', tier.seconds)} AS bucket, {key} AS key FROM {table}"


def derive(con: duckdb.DuckDBPyConnection, selected: str, tier: Tier, params: list | None = None,
           reopen: bool = True) -> None:
    """Sum the rows of ``tier`` of the (bucket, key) pairs ``selected`` (a SELECT, as ``pairs``)
    yields again from the 15-minute ones: after a customer's erase removed some of those (a coarse
    tier cannot tell its rows apart), or a reprice changed them. A tier without keys sums its whole
    buckets again. Run inside the caller's transaction."""
    start = bucket_sql("r.bucket", tier.seconds)
    keyed = "key_id" in tier.dimensions
    con.execute(f"CREATE OR REPLACE TEMP TABLE rollup_pairs AS {selected}", params or [])
    con.execute(f"DELETE FROM {tier.table} USING rollup_pairs p WHERE {tier.table}.bucket = p.bucket"
                + (f" AND coalesce({tier.table}.key_id, -1) = p.key" if keyed else ""))
    con.execute(insert(tier, merged(
        f"SELECT {start} AS bucket, {_columns(tier, 'r.')} FROM rollups r "
        f"JOIN (SELECT DISTINCT bucket, key FROM rollup_pairs) p ON {start} = p.bucket"
        + (" AND coalesce(r.key_id, -1) = p.key" if keyed else ""), tier)))
    if tier.keyed and reopen:
        _reopened(con, "rollup_pairs")
    con.execute("DROP TABLE rollup_pairs")


def _reopened(con: duckdb.DuckDBPyConnection, buckets: str) -> None:
    """Rows of a tier naming customers appended for the buckets of the table ``buckets``: out of
    customer order, which the first of their weeks is put in again (customer_order.reopen). The
    weekly customers' rows are derived after every ``rebuild`` of 15-minute rows (a reprice, the
    proxy histograms' backfill), so this covers those too."""
    from . import customer_order  # it builds on this module

    (first,) = con.execute(f"SELECT min(bucket) FROM {buckets}").fetchone()  # type: ignore[misc]
    if first is not None:
        customer_order.reopen(con, first)


def derive_all(tier: Tier, source: Tier = FINE) -> str:
    """The INSERT filling an empty ``tier`` from every row of ``source`` (a migration's, before the
    customer key's: m034 fills it in): the 15-minute rows, or a tier with the same buckets or
    narrower ones that names every tag ``tier`` does (the daily totals' from the models' days)."""
    return (f"INSERT INTO {tier.table} BY NAME " + merged(f"SELECT {bucket_sql('bucket', tier.seconds)} AS bucket, "
                                                           f"{_columns(tier)} FROM {source.table}", tier))


def compact(con: duckdb.DuckDBPyConnection, since: dt.datetime | None, until: dt.datetime,
            tier: Tier = FINE) -> int:
    """Merge the rows of each group in buckets [since, until) of ``tier`` into one, in a transaction
    of its own (``merge``); returns the rows removed."""
    with transaction(con):
        return merge(con, since, until, tier)


def merge(con: duckdb.DuckDBPyConnection, since: dt.datetime | None, until: dt.datetime, tier: Tier) -> int:
    """``compact`` in the caller's transaction. Sums and histograms stay as they were: only the
    count of rows changes. A tier naming customers gets them back in customer key order: one
    customer's rows of a closed week (customer_order.py) then sit in a vector or two, not in every one."""
    bounds, params = "bucket < ?", [until]
    if since is not None:
        bounds, params = "bucket >= ? AND bucket < ?", [since, until]
    (before,) = con.execute(f"SELECT count(*) FROM {tier.table} WHERE {bounds}", params).fetchone()  # type: ignore[misc]
    order = f" ORDER BY {customer_key_sql('customer_id')}, bucket" if tier.keyed else ""
    con.execute(f"CREATE OR REPLACE TEMP TABLE rollup_merge AS SELECT * FROM "
                f"({merged(f'SELECT * FROM {tier.table} WHERE {bounds}', tier)}){order}", params)
    con.execute(f"DELETE FROM {tier.table} WHERE {bounds}", params)
    con.execute(insert(tier, "SELECT * FROM rollup_merge"))
    (after,) = con.execute("SELECT count(*) FROM rollup_merge").fetchone()  # type: ignore[misc]
    con.execute("DROP TABLE rollup_merge")
    return before - after


_settled: set[tuple[str, dt.datetime]] = set()  # (table, bucket) this process has compacted (compact_previous)
_quarters: set[dt.datetime] = set()  # the 15-minute buckets this process has written rows in


def compact_previous(con: duckdb.DuckDBPyConnection, newest: dt.datetime) -> None:
    """Once per bucket per tier per process: merge the rows the flushes left in the bucket before
    ``newest``'s, so a closed bucket holds one row per group (each flush adds rows of its own).
    And when this process moves on to a new 15-minute bucket, the open bucket of each coarser
    tier, so an open day holds a row per group and flush of its last quarter hour, not of every
    flush since midnight. Not on a process's first write: in the shared mode replicas then start
    together, and a merge's DELETE has the lake to itself (transaction.lake_turn), so the other
    replicas' flushes wait for it. Rows arriving later (a spill replay, another replica) add a few
    rows more, which reads sum alike."""
    quarter = bucket_start(newest, FINE.seconds)
    moved_on = bool(_quarters) and quarter not in _quarters
    busy = False
    try:
        for tier in TIERS:
            previous = bucket_start(newest, tier.seconds) - dt.timedelta(seconds=tier.seconds)
            if (tier.table, previous) not in _settled:
                _settled.add((tier.table, previous))
                try:
                    _merge_bucket(con, tier, previous)
                except StoreBusy:
                    _settled.discard((tier.table, previous))
                    raise
            if moved_on and tier is not FINE:
                _merge_bucket(con, tier, bucket_start(newest, tier.seconds))
    except StoreBusy:  # the shared storage's turn not had in time: the next flush tries these merges again
        busy = True
        raise
    finally:
        if not busy:
            _quarters.add(quarter)


def _merge_bucket(con: duckdb.DuckDBPyConnection, tier: Tier, bucket: dt.datetime) -> None:
    (extra,) = con.execute(f"SELECT count(*) - count(DISTINCT ({', '.join(tier.dimensions) or 'bucket'})) "
                           f"FROM {tier.table} "
                           f"WHERE bucket = ?", [bucket]).fetchone()  # type: ignore[misc]
    if extra:
        compact(con, bucket, bucket + dt.timedelta(seconds=tier.seconds), tier)


def quantiles(rows: list[tuple], points: tuple[float, ...]) -> dict[tuple, tuple[float | None, ...]]:
    """{group: (value at each point)} from rows (group..., total, then (low bin, high bin) per point),
    interpolated as quantile_cont does between the two ranks it reads."""
    width = 1 + 2 * len(points)
    found = {}
    for row in rows:
        group, (total, *bins) = tuple(row[:-width]), row[-width:]
        values: list[float | None] = []
        for i, p in enumerate(points):
            low, high = bins[2 * i], bins[2 * i + 1]
            if not total or low is None or high is None:
                values.append(None)
                continue
            at = (total - 1) * p
            values.append(bin_value(low) + (at - math.floor(at)) * (bin_value(high) - bin_value(low)))
        found[group] = tuple(values)
    return found


def quantile_sql(source: str, names: list[str], points: tuple[float, ...], histogram: str = "latency") -> str:
    """Per group of ``names`` over ``source`` (rows with a ``histogram`` column): the total and,
    per point, the bins of the two ranks quantile_cont would interpolate between."""
    group = ", ".join(names)
    partition = f"PARTITION BY {group}" if names else ""
    picks = ", ".join(f"min(b) FILTER (WHERE upto > floor((total - 1) * {p})), "
                      f"min(b) FILTER (WHERE upto > ceil((total - 1) * {p}))" for p in points)
    return f"""
        WITH bins AS (SELECT {group + ',' if names else ''} b, sum(n) AS n FROM
                        (SELECT {group + ',' if names else ''} unnest(map_keys({histogram})) AS b,
                                unnest(map_values({histogram})) AS n FROM ({source}))
                      GROUP BY ALL),
        cum AS (SELECT *, sum(n) OVER ({partition} ORDER BY b ROWS UNBOUNDED PRECEDING) AS upto,
                       sum(n) OVER ({partition}) AS total FROM bins)
        SELECT {group + ',' if names else ''} any_value(total), {picks} FROM cum
        {'GROUP BY ' + group if names else ''}"""
