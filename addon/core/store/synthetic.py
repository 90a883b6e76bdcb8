"""Realistic fake calls for benchmarks and volume tests, generated inside DuckDB (millions per second).

Skewed like real traffic: a few models take most calls, customers follow a long tail, and
about 3% of calls fail. Costs follow list prices for the token counts (one unpriced model).
"""

from __future__ import annotations

import datetime as dt

import duckdb

from . import rollups
from .calls import COST_TYPE, customer_key_sql

# (model, provider, input $/Mtok, output $/Mtok); None: a model without a price.
MODELS = [
    ("gpt-4o-mini-2024-07-18", "openai", 0.15, 0.60),
    ("gpt-4o-2024-08-06", "openai", 2.50, 10.00),
    ("claude-sonnet-4-20250514", "anthropic", 3.00, 15.00),
    ("gpt-5-mini-2025-08-07", "openai", 0.25, 2.00),
    ("claude-3-5-haiku-20241022", "anthropic", 0.80, 4.00),
    ("text-embedding-3-small", "openai", 0.02, 0.0),
    ("claude-opus-4-20250514", "anthropic", 15.00, 75.00),
    ("acme-ft-7b", "openai", None, None),
]


def generate(con: duckdb.DuckDBPyConnection, rows: int, end: dt.datetime, days: int = 90,
             customers: int = 10_000, features: int = 50, keys: int = 20, batch: int = 1_000_000) -> None:
    """Into a range of time without calls. Rows go in oldest first, in batches, as a proxy appends
    them: that is what makes DuckDB's per-block min/max of ``ts`` skip most of the file for a
    recent time range."""
    batches = max(1, -(-rows // batch))
    span = dt.timedelta(days=days) / batches
    start = end - dt.timedelta(days=days)
    for n in range(batches):
        count = rows // batches + (1 if n < rows % batches else 0)
        _generate(con, count, start + span * (n + 1), span, customers, features, keys)
    # A bucket that two batches cut holds rows of each: merged, as a proxy merges a bucket once it
    # closes (rollups.compact_previous), so the tiers hold what a proxy's would.
    cut = {(tier, rollups.bucket_start(start + span * n, tier.seconds)) for n in range(1, batches)
           for tier in rollups.TIERS}
    for tier, bucket in sorted(cut, key=lambda c: (c[0].table, c[1])):
        rollups.compact(con, bucket, bucket + dt.timedelta(seconds=tier.seconds), tier)


def _generate(con: duckdb.DuckDBPyConnection, rows: int, end: dt.datetime, span: dt.timedelta,
              customers: int, features: int, keys: int) -> None:
    span_us = int(span.total_seconds() * 1e6)
    models = ", ".join(
        f"({i}, '{m}', '{p}', {'NULL' if a is None else a}, {'NULL' if b is None else b})"
        for i, (m, p, a, b) in enumerate(MODELS))
    con.execute(f"""
        INSERT INTO calls (id, ts, key_id, provider, endpoint, model, stream, status, outcome, error,
            input_tokens, cache_read_tokens, cache_write_tokens, cache_write_1h_tokens, output_tokens,
            reasoning_tokens, web_search_requests, cost_usd, priced, price_source, usage_source,
            customer_id, feature, latency_ms, ttft_ms, proxy_us, customer_key)
        WITH m(i, model, provider, in_rate, out_rate) AS (VALUES {models}),
        base AS (
            SELECT uuid() AS id,
                   ?::TIMESTAMPTZ - to_microseconds((random() * {span_us})::BIGINT) AS ts,
                   least(floor(pow(random(), 2.5) * {len(MODELS)}), {len(MODELS) - 1})::INT AS model_i,
                   1 + floor(pow(random(), 2) * {keys})::INT AS key_id,
                   'cust-' || floor(pow(random(), 3) * {customers})::INT AS customer_id,
                   'feature-' || floor(pow(random(), 1.5) * {features})::INT AS feature,
                   (50 + random() * 4000)::BIGINT AS input_tokens,
                   (random() * 600)::BIGINT AS output_tokens,
                   random() < 0.3 AS is_stream,
                   random() AS luck,
                   20 + random() * random() * 8000 AS latency_ms
            FROM range({rows})
        )
        SELECT id, ts, key_id, m.provider,
               CASE WHEN m.provider = 'anthropic' THEN '/v1/messages' ELSE '/v1/chat/completions' END,
               m.model, is_stream,
               CASE WHEN luck < 0.02 THEN 429 WHEN luck < 0.03 THEN 500 ELSE 200 END,
               'completed', NULL,
               CASE WHEN luck < 0.03 THEN 0 ELSE input_tokens END, 0, 0, 0,
               CASE WHEN luck < 0.03 THEN 0 ELSE output_tokens END, 0, 0,
               -- a refused or failed call bills nothing: $0, known, as the proxy stores it (record.py)
               CASE WHEN luck < 0.03 THEN 0 WHEN m.in_rate IS NULL THEN NULL
                    ELSE (input_tokens * m.in_rate + output_tokens * m.out_rate) / 1e6 END::{COST_TYPE},
               luck < 0.03 OR m.in_rate IS NOT NULL,
               CASE WHEN luck >= 0.03 AND m.in_rate IS NOT NULL THEN 'synthetic' END,
               CASE WHEN luck < 0.03 THEN 'none' ELSE 'reported' END,
               customer_id, feature, latency_ms, CASE WHEN is_stream THEN latency_ms / 4 END,
               -- the time in the proxy's hooks, as recorded (docs/benchmarks.md: p50 ~0.3 ms)
               (150 + random() * random() * 2000)::BIGINT, {customer_key_sql('customer_id')}
        FROM base JOIN m ON m.i = base.model_i
        ORDER BY ts
    """, [end])
    # Their rollups, as calls.insert writes them (the range is this batch's: ts in (end - span, end]).
    for tier in rollups.TIERS:
        con.execute(rollups.insert(tier, rollups.aggregate("SELECT * FROM calls WHERE ts > ? AND ts <= ?", tier)),
                    [end - span, end])
