"""SQL for the ``calls`` table: one row per proxied call, metadata only."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence

import duckdb

from . import batch
from .errors import StoreBusy
from .transaction import transaction

log = logging.getLogger(__name__)

# Money: 18 decimals hold any list rate (at most 12 decimals per million tokens) times a token
# count exactly, so a sum of stored costs is the cost of the summed usage (docs/pricing.md).
COST_TYPE = "DECIMAL(38, 18)"
# Usage in other units than text tokens (migrations.m017_units_columns): tokens of audio and images
# (parts of the input and output tokens), and what is billed per image, per second, per character.
UNIT_COLUMNS: list[tuple[str, str, str]] = [
    ("input_audio_tokens", "BIGINT", "audio tokens in input_tokens (a transcription's audio)"),
    ("output_audio_tokens", "BIGINT", "audio tokens in output_tokens (speech)"),
    ("input_image_tokens", "BIGINT", "image tokens in input_tokens (an image edit's pictures)"),
    ("output_image_tokens", "BIGINT", "image tokens in output_tokens (a generated image)"),
    # migrations.m019_realtime_cached_kinds
    ("cache_read_audio_tokens", "BIGINT", "audio tokens in cache_read_tokens (a realtime session's audio)"),
    ("cache_read_image_tokens", "BIGINT", "image tokens in cache_read_tokens"),
    ("images", "BIGINT", "images generated (priced per image: dall-e)"),
    ("audio_seconds", "DECIMAL(18, 3)", "seconds of audio transcribed or translated (whisper-1)"),
    ("characters", "BIGINT", "characters of text spoken (tts-1, tts-1-hd)"),
    # migrations.m020_tools: server-side tools, billed per call or per session on top of tokens
    ("web_fetch_requests", "BIGINT", "pages fetched by Anthropic's web fetch tool (billed as tokens only)"),
    ("file_search_calls", "BIGINT", "file search tool calls (OpenAI Responses: file_search_call items)"),
    ("code_executions", "BIGINT", "code runs (OpenAI code_interpreter_call items, Anthropic code execution)"),
    ("containers", "BIGINT", "containers that code ran in, billed by session time (estimated)"),
    ("grounded_prompts", "BIGINT", "prompts grounded with Google Search, billed per prompt (Gemini 2.x)"),
    # migrations.m038_openai_tools
    ("image_generation_calls", "BIGINT", "images made by the image generation tool (OpenAI Responses: "
                                         "image_generation_call items), billed outside the usage: unpriced"),
    ("web_search_preview_requests", "BIGINT", "the part of web_search_requests run by OpenAI's "
                                              "web_search_preview tool (a flat rate on gpt-4o and gpt-4.1)"),
    # migrations.m039_guardrail_checks
    ("guardrail_checks", "BIGINT", "1 for a call a Bedrock guardrail checked, billed per text unit and "
                                   "policy outside the usage: unpriced"),
    # migrations.m040_advisor_calls
    ("advisor_calls", "BIGINT", "the times Anthropic's advisor tool had another model advise, billed at that "
                                "model's rates on tokens outside the row's: unpriced"),
]
UNIT_NAMES = [name for name, _, _ in UNIT_COLUMNS]
# The server-side tools' counts (pricing.usage.TOOL_FIELDS), summed in reports.
TOOL_NAMES = ["web_search_requests", "web_fetch_requests", "file_search_calls", "code_executions", "containers",
              "grounded_prompts", "image_generation_calls", "guardrail_checks", "advisor_calls"]
# Parts of a count above with a rate of their own: summed too wherever tools' fees are priced again
# (reconciliation's tool line), not shown as counts of their own.
TOOL_PARTS = ["web_search_preview_requests"]
# (column, DuckDB type) in table order; rows are dicts keyed by these names.
CALL_COLUMNS: list[tuple[str, str]] = [
    ("id", "UUID"), ("ts", "TIMESTAMPTZ"), ("key_id", "INTEGER"), ("provider", "VARCHAR"),
    ("endpoint", "VARCHAR"), ("model", "VARCHAR"), ("stream", "BOOLEAN"), ("status", "INTEGER"),
    ("outcome", "VARCHAR"), ("error", "VARCHAR"),
    ("input_tokens", "BIGINT"), ("cache_read_tokens", "BIGINT"), ("cache_write_tokens", "BIGINT"),
    ("cache_write_1h_tokens", "BIGINT"), ("output_tokens", "BIGINT"), ("reasoning_tokens", "BIGINT"),
    ("web_search_requests", "INTEGER"), ("cost_usd", COST_TYPE), ("priced", "BOOLEAN"),
    ("price_source", "VARCHAR"), ("usage_source", "VARCHAR"), ("customer_id", "VARCHAR"),
    ("feature", "VARCHAR"), ("latency_ms", "DOUBLE"), ("ttft_ms", "DOUBLE"), ("service_tier", "VARCHAR"),
    *[(name, typ) for name, typ, _ in UNIT_COLUMNS],
    # The list-price data the call was priced with (pricing.PriceData.id; migrations.m021_prices).
    ("price_snapshot", "VARCHAR"),
    # Microseconds the call spent in the proxy's own hooks (addon/overhead.py; migrations.m022_proxy_us).
    ("proxy_us", "BIGINT"),
]
COLUMN_NAMES = [name for name, _ in CALL_COLUMNS]
# The customer as a number beside its text (migrations.m033_customer_key), written with every row,
# not exported (a GDPR export, every stored column, has it): a scan for one customer compares
# integers instead of decompressing every row's text (a year of 100M calls: 0.82 -> 0.06 s to find
# a customer's 1,810), reports.where. 0 for a call without a customer; NULL in rows a version before
# it wrote (a lake's older rows, an old replica's; found by the text). md5: the same number whatever
# DuckDB version wrote it.
CUSTOMER_KEY_COLUMN = "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS customer_key INTEGER"


# A call whose cost nobody knows: no price for its usage, no usage at all (an answer without it), or
# usage not believed. Counted as unpriced everywhere, never a $0 (a free call is priced at $0).
UNPRICED = "NOT priced"


def customer_key_sql(text: str) -> str:
    """The customer key (CUSTOMER_KEY_COLUMN) of the SQL expression ``text``."""
    return f"coalesce((md5_number_lower({text}) % 2147483647)::INTEGER, 0)"


# Set only by `aispendtrack reprice`: what the call cost before, and by which price data.
REPRICE_COLUMNS = ["previous_cost_usd", "previous_price_source", "repriced_at"]
_NAMES = ", ".join(COLUMN_NAMES)

# One JSON parameter for the whole batch (batch.py): ~50x faster than executemany.
_BATCH = batch.select(CALL_COLUMNS)


def insert(con: duckdb.DuckDBPyConnection, rows: Sequence[dict], skip_existing: bool = False) -> int:
    """Insert rows in one transaction, with their sums into every rollup tier (store/rollups.py): the one
    place rows are written (the writer's flush, spill replay, a replica's late rows), so whichever
    connection writes them keeps rollups and raw rows in step. ``skip_existing`` drops ids already
    stored (spill replay)."""
    from . import rollups  # it sums the columns defined here

    if not rows:
        return 0
    # A row spilled by an older version lacks the columns added since; they are NULL.
    params: list = [batch.param(CALL_COLUMNS, rows)]
    source = _BATCH
    if skip_existing:
        source = (f"SELECT b.* FROM ({_BATCH}) b WHERE b.id NOT IN "
                  f"(SELECT id FROM calls WHERE ts BETWEEN ? AND ?)")
        params += [min(r["ts"] for r in rows), max(r["ts"] for r in rows)]
    with transaction(con, appends=True):
        # The rollup first: with skip_existing it must see the ids stored before this insert.
        for tier in rollups.TIERS:
            con.execute(rollups.insert(tier, rollups.aggregate(source, tier)), params)
        con.execute(f"INSERT INTO calls ({_NAMES}, customer_key) "
                    f"SELECT *, {customer_key_sql('customer_id')} FROM ({source})", params)
    try:  # the rows are stored: merging the rollups' rows of the last bucket may fail alone
        rollups.compact_previous(con, max(_aware(r["ts"]) for r in rows))
    except StoreBusy as exc:  # the shared storage's turn for it not had at once: nothing is wrong
        log.info("rollups of the last 15 minutes left unmerged for now (%s); the next flush tries again", exc)
    except duckdb.Error:
        log.exception("could not merge the rollups of the last 15 minutes; reports stay right, the next "
                      "bucket tries again")
    return len(rows)


def _aware(ts: dt.datetime | str) -> dt.datetime:
    """A row's time as the writer holds it (a datetime), or as a spill file gave it back (text)."""
    at = ts if isinstance(ts, dt.datetime) else dt.datetime.fromisoformat(ts)
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)


def newest(con: duckdb.DuckDBPyConnection, limit: int) -> list[dict]:
    cur = con.execute(f"SELECT {', '.join(COLUMN_NAMES)} FROM calls ORDER BY ts DESC, id LIMIT ?", [limit])
    return [dict(zip(COLUMN_NAMES, values, strict=True)) for values in cur.fetchall()]


def unpriced_models(con: duckdb.DuckDBPyConnection, since: dt.datetime | None = None) -> list[dict]:
    """Models (and service tiers) seen in calls we could not price (since ``since``), with how
    often, and when first and last."""
    cur = con.execute("""
        SELECT provider, model, service_tier, count(*) AS calls, max(ts) AS last_seen, min(ts) AS first_seen
        FROM calls
        WHERE NOT priced AND usage_source NOT IN ('none', 'invalid', 'unmetered') AND model IS NOT NULL
          AND (?::TIMESTAMPTZ IS NULL OR ts >= ?)
        GROUP BY provider, model, service_tier ORDER BY calls DESC, model, service_tier NULLS FIRST
    """, [since, since])
    return [dict(zip(("provider", "model", "service_tier", "calls", "last_seen", "first_seen"), v, strict=True))
            for v in cur.fetchall()]


def not_stored(con: duckdb.DuckDBPyConnection, rows: list[dict]) -> list[dict]:
    """``rows`` (each with its "id") but those stored already: a crash after a spill file's insert and
    before its removal leaves its rows in both (its replay skips them)."""
    if not rows:
        return rows
    stored = {str(i) for (i,) in con.execute("SELECT id::VARCHAR FROM calls WHERE id::VARCHAR IN "
                                             "(SELECT unnest(?::VARCHAR[]))", [[r["id"] for r in rows]]).fetchall()}
    return [r for r in rows if r["id"] not in stored]


def counts_since(con: duckdb.DuckDBPyConnection, hour_start, month_start) -> dict[int, tuple[int, int]]:
    """key id -> (calls since hour_start, calls since month_start): what the limits have used."""
    cur = con.execute("""
        SELECT key_id, coalesce(sum(calls) FILTER (WHERE ts >= ?), 0), coalesce(sum(calls) FILTER (WHERE ts >= ?), 0)
        FROM usage_history WHERE ts >= least(?::TIMESTAMPTZ, ?::TIMESTAMPTZ) AND key_id IS NOT NULL GROUP BY key_id
    """, [hour_start, month_start, hour_start, month_start])
    return {key_id: (hour, month) for key_id, hour, month in cur.fetchall()}
