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

Latency: a mergeable histogram, bin ``b`` holding latencies in (G^(b-1), G^b] with G = (1+A)/(1-A),
A = 0.0099. Each bin stands for 2*G^b/(G+1), within A (0.99%) of every latency in it; a
percentile is the interpolation quantile_cont makes, between the bins of the two ranks it reads,
so it too is within 0.99% of the exact one (before rounding to the microsecond). Zero (or a
negative clock step) has bin ``ZERO_BIN``, standing for 0.
"""

from __future__ import annotations

import datetime as dt
import math

import duckdb

from .calls import UNIT_NAMES

BUCKET = dt.timedelta(minutes=15)
_BUCKET_S = int(BUCKET.total_seconds())
RELATIVE_ERROR = 0.0099
GROWTH = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
ZERO_BIN = -32768
DIMENSIONS = ["key_id", "customer_id", "feature", "provider", "model", "status", "failed"]
COUNTS = ["calls", "errors", "unpriced_calls", "unmetered_calls", "estimated_calls"]
SUMS = ["input_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens", "output_tokens",
        "reasoning_tokens", "web_search_requests", *UNIT_NAMES]
_SUM_TYPE = {"audio_seconds": "DECIMAL(38, 3)"}
FAILED = "(status >= 400 OR outcome <> 'completed')"  # reports.FAILED

DDL = f"""
    CREATE TABLE IF NOT EXISTS rollups (
        bucket TIMESTAMPTZ NOT NULL,      -- start of a 15-minute UTC bucket (store/rollups.py)
        key_id INTEGER, customer_id VARCHAR, feature VARCHAR, provider VARCHAR NOT NULL, model VARCHAR,
        status INTEGER,                   -- the HTTP status; NULL for totals kept from hourly_usage
        failed BOOLEAN,                   -- what reports count as an error; NULL as status
        {", ".join(f"{c} BIGINT NOT NULL" for c in COUNTS)},
        {", ".join(f"{c} {_SUM_TYPE.get(c, 'BIGINT')}" for c in SUMS)},
        cost_usd DECIMAL(38, 18),         -- NULL when no call of the row was priced, as sum() is
        latency MAP(SMALLINT, BIGINT)     -- histogram bin -> calls (store/rollups.py)
    )
"""


def bin_sql(column: str = "latency_ms") -> str:
    return (f"CASE WHEN {column} IS NULL THEN NULL WHEN {column} <= 0 THEN {ZERO_BIN} "
            f"ELSE ceil(ln({column}) / {math.log(GROWTH)!r})::SMALLINT END")


def bin_value(b: int) -> float:
    return 0.0 if b == ZERO_BIN else 2 * GROWTH ** b / (GROWTH + 1)


def bucket_sql(column: str = "ts") -> str:
    return f"to_timestamp(floor(epoch({column}) / {_BUCKET_S}) * {_BUCKET_S})"


def aggregate(source: str) -> str:
    """Rollup rows (table order) of the calls that ``source`` (a SELECT of calls' columns) yields."""
    sums = ", ".join(f"sum({c})::{_SUM_TYPE.get(c, 'BIGINT')} AS {c}" for c in SUMS)
    return f"""
        SELECT {bucket_sql()} AS bucket, key_id, customer_id, feature, provider, model, status,
               coalesce({FAILED}, false) AS failed, count(*) AS calls,
               count(*) FILTER (WHERE {FAILED}) AS errors,
               count(*) FILTER (WHERE NOT priced AND usage_source NOT IN ('none', 'invalid')) AS unpriced_calls,
               count(*) FILTER (WHERE usage_source = 'unmetered') AS unmetered_calls,
               count(*) FILTER (WHERE usage_source IN ('estimated', 'partial')) AS estimated_calls,
               {sums}, sum(cost_usd) AS cost_usd,
               histogram({bin_sql()})::MAP(SMALLINT, BIGINT) AS latency
        FROM ({source}) s GROUP BY ALL"""


def rebuild(con: duckdb.DuckDBPyConnection, condition: str, params: list) -> None:
    """Replace the rollup rows of the (bucket, key) pairs of the raw calls matching ``condition``
    by sums of those pairs' raw rows. Exact because a purge removes a key's calls by whole hours:
    a (bucket, key) pair's calls are all raw or all purged. Run inside the caller's transaction."""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE rollup_pairs AS
        SELECT DISTINCT {bucket_sql()} AS bucket, coalesce(key_id, -1) AS key FROM calls WHERE {condition}""", params)
    con.execute("DELETE FROM rollups USING rollup_pairs p "
                "WHERE rollups.bucket = p.bucket AND coalesce(rollups.key_id, -1) = p.key")
    con.execute("INSERT INTO rollups " + aggregate(
        f"SELECT c.* FROM calls c JOIN rollup_pairs p ON {bucket_sql('c.ts')} = p.bucket "
        f"AND coalesce(c.key_id, -1) = p.key"))
    con.execute("DROP TABLE rollup_pairs")


def compact(con: duckdb.DuckDBPyConnection, since: dt.datetime | None, until: dt.datetime) -> int:
    """Merge the rows of each group in buckets [since, until) into one; returns the rows removed.
    Sums and histograms stay as they were: only the count of rows changes."""
    bounds, params = "bucket < ?", [until]
    if since is not None:
        bounds, params = "bucket >= ? AND bucket < ?", [since, until]
    group = ", ".join(["bucket", *DIMENSIONS])
    merged_sums = ", ".join(f"sum({c})::{'BIGINT' if c in COUNTS else _SUM_TYPE.get(c, 'BIGINT')} AS {c}"
                            for c in [*COUNTS, *SUMS])
    con.execute("BEGIN")
    try:
        (before,) = con.execute(f"SELECT count(*) FROM rollups WHERE {bounds}", params).fetchone()  # type: ignore[misc]
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE rollup_merge AS
            WITH r AS (SELECT *, row_number() OVER () AS row_id FROM rollups WHERE {bounds}),
            sums AS (SELECT {group}, {merged_sums}, sum(cost_usd) AS cost_usd, min(row_id) AS row_id
                     FROM r GROUP BY ALL),
            bins AS (SELECT {group}, b, sum(n)::BIGINT AS n FROM
                       (SELECT {group}, unnest(map_keys(latency)) AS b, unnest(map_values(latency)) AS n FROM r)
                     GROUP BY ALL),
            hist AS (SELECT {group}, map(list(b ORDER BY b), list(n ORDER BY b)) AS latency FROM bins GROUP BY ALL)
            SELECT {", ".join(f"sums.{c}" for c in ["bucket", *DIMENSIONS, *COUNTS, *SUMS, "cost_usd"])},
                   coalesce(hist.latency, MAP {{}}::MAP(SMALLINT, BIGINT)) AS latency
            FROM sums LEFT JOIN hist ON {" AND ".join(f"sums.{c} IS NOT DISTINCT FROM hist.{c}"
                                                       for c in ["bucket", *DIMENSIONS])}
        """, params)
        con.execute(f"DELETE FROM rollups WHERE {bounds}", params)
        con.execute("INSERT INTO rollups SELECT * FROM rollup_merge")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    (after,) = con.execute("SELECT count(*) FROM rollup_merge").fetchone()  # type: ignore[misc]
    con.execute("DROP TABLE rollup_merge")
    return before - after


_settled: set[dt.datetime] = set()  # buckets this process has compacted (compact_previous)


def compact_previous(con: duckdb.DuckDBPyConnection, newest: dt.datetime) -> None:
    """Once per bucket per process: merge the rows the flushes left in the bucket before
    ``newest``'s, so a closed bucket holds one row per group (each flush adds rows of its own).
    Rows arriving later (a spill replay, another replica) add a few rows more, which reads sum alike."""
    previous = dt.datetime.fromtimestamp(newest.timestamp() // _BUCKET_S * _BUCKET_S, dt.UTC) - BUCKET
    if previous in _settled:
        return
    _settled.add(previous)
    (extra,) = con.execute(f"SELECT count(*) - count(DISTINCT ({', '.join(DIMENSIONS)})) FROM rollups "
                           f"WHERE bucket = ?", [previous]).fetchone()  # type: ignore[misc]
    if extra:
        compact(con, previous, previous + BUCKET)


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


def quantile_sql(source: str, names: list[str], points: tuple[float, ...]) -> str:
    """Per group of ``names`` over ``source`` (rows with a ``latency`` histogram): the total and,
    per point, the bins of the two ranks quantile_cont would interpolate between."""
    group = ", ".join(names)
    partition = f"PARTITION BY {group}" if names else ""
    picks = ", ".join(f"min(b) FILTER (WHERE upto > floor((total - 1) * {p})), "
                      f"min(b) FILTER (WHERE upto > ceil((total - 1) * {p}))" for p in points)
    return f"""
        WITH bins AS (SELECT {group + ',' if names else ''} b, sum(n) AS n FROM
                        (SELECT {group + ',' if names else ''} unnest(map_keys(latency)) AS b,
                                unnest(map_values(latency)) AS n FROM ({source}))
                      GROUP BY ALL),
        cum AS (SELECT *, sum(n) OVER ({partition} ORDER BY b ROWS UNBOUNDED PRECEDING) AS upto,
                       sum(n) OVER ({partition}) AS total FROM bins)
        SELECT {group + ',' if names else ''} any_value(total), {picks} FROM cum
        {'GROUP BY ' + group if names else ''}"""
