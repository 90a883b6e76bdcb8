"""SQL for our side of a reconciliation: what we recorded per UTC day (or hour) and model."""

from __future__ import annotations

import datetime as dt

import duckdb

from . import raw_horizon, rollups
from .calls import TOOL_NAMES, TOOL_PARTS

_SUMS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens", "output_tokens",
         "web_search_requests", "images", "audio_seconds", "characters", "cost_usd")


def per_bucket(con: duckdb.DuckDBPyConnection, provider: str, start: dt.datetime, end: dt.datetime,
               hourly: bool = False) -> list[dict]:
    """Calls the provider answered with usage, per UTC bucket and model, in [start, end).

    Only calls with usage count: a provider bills (and reports) the requests it served, not the
    ones refused before any token or never answered. Cache writes include the 1-hour ones. A batch's
    row (one per model) counts no requests: the provider counts each of the batch's requests.
    Buckets whose raw calls a purge may have taken (before raw_horizon) are read from the rollups,
    which keep their sums: there requests are None, not counted (a rollup does not tell a batch's
    row, or a call without usage, from the others)."""
    tier = rollups.COARSE if hourly else rollups.MODELS
    horizon = raw_horizon.since(con)
    split = start if horizon <= start else min(rollups.bucket_after(horizon, tier.seconds), end)
    kept = _from_rollups(con, tier, provider, start, split) if split > start else []
    return kept + (_from_calls(con, provider, split, end, hourly) if split < end else [])


def _from_rollups(con: duckdb.DuckDBPyConnection, tier: rollups.Tier, provider: str, start: dt.datetime,
                  end: dt.datetime) -> list[dict]:
    sums = ", ".join(f"sum({name}) AS {name}" for name in _SUMS)
    cur = con.execute(f"""
        SELECT timezone('UTC', bucket) AS bucket, model, NULL AS requests, {sums} FROM {tier.table}
        WHERE provider = ? AND bucket >= ? AND bucket < ? AND model IS NOT NULL
        GROUP BY ALL ORDER BY bucket, model
    """, [provider, start, end])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _from_calls(con: duckdb.DuckDBPyConnection, provider: str, start: dt.datetime, end: dt.datetime,
                hourly: bool) -> list[dict]:
    width = "hour" if hourly else "day"
    cur = con.execute(f"""
        SELECT date_trunc('{width}', timezone('UTC', ts)) AS bucket, model,
               count(*) FILTER (WHERE service_tier IS DISTINCT FROM 'batch') AS requests,
               sum(input_tokens) AS input_tokens, sum(cache_read_tokens) AS cache_read_tokens,
               sum(cache_write_tokens) AS cache_write_tokens, sum(cache_write_1h_tokens) AS cache_write_1h_tokens,
               sum(output_tokens) AS output_tokens,
               sum(web_search_requests) AS web_search_requests, sum(images) AS images,
               sum(audio_seconds) AS audio_seconds, sum(characters) AS characters, sum(cost_usd) AS cost_usd
        FROM calls
        WHERE provider = ? AND ts >= ? AND ts < ? AND usage_source NOT IN ('none', 'invalid') AND model IS NOT NULL
        GROUP BY ALL ORDER BY bucket, model
    """, [provider, start, end])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def per_endpoint(con: duckdb.DuckDBPyConnection, provider: str, start: dt.datetime, end: dt.datetime) -> list[dict]:
    """What we recorded in [start, end) per endpoint, service tier and model: calls, cost and the
    server-side tools' counts (the kinds of spend reconciliation puts beside the provider's cost line
    items). Calls the provider refused (a 4xx or 5xx) are not billed, so not counted."""
    tools = ", ".join(f"coalesce(sum({name}), 0)::BIGINT AS {name}" for name in TOOL_NAMES + TOOL_PARTS)
    cur = con.execute(f"""
        SELECT endpoint, service_tier, model, count(*) AS calls, sum(cost_usd) AS cost_usd, {tools}
        FROM calls
        WHERE provider = ? AND ts >= ? AND ts < ? AND coalesce(status, 200) < 400
        GROUP BY ALL ORDER BY endpoint
    """, [provider, start, end])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
