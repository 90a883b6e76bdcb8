"""SQL for retention: rolling raw calls up into ``hourly_usage`` and deleting them.

A purge runs in one transaction: the calls before each key's cutoff are summed per UTC hour and
tag combination into ``hourly_usage`` and then deleted, so ``usage_history`` (raw plus rolled up)
counts every call exactly once before, during and after it.
"""

from __future__ import annotations

import datetime as dt

import duckdb

from . import batches
from .connection import control, one

# Rollups and alert history are kept this long: a year of budgets, quotas and spike baselines.
HISTORY_DAYS = 400
_NO_KEY = -1  # calls.key_id is NULL only for rows from before keys existed; they follow the default cutoff

_ROLLUP = """
    CREATE OR REPLACE TEMP TABLE purge_rollup AS
    SELECT to_timestamp(floor(epoch(c.ts) / 3600) * 3600) AS hour, c.key_id, c.customer_id, c.feature,
           c.provider, c.model, count(*) AS calls,
           count(*) FILTER (WHERE c.outcome <> 'completed' OR c.status >= 400) AS failed_calls,
           count(*) FILTER (WHERE NOT c.priced AND c.usage_source NOT IN ('none', 'invalid')) AS unpriced_calls,
           sum(c.input_tokens) AS input_tokens, sum(c.cache_read_tokens) AS cache_read_tokens,
           sum(c.cache_write_tokens) AS cache_write_tokens, sum(c.output_tokens) AS output_tokens,
           sum(c.reasoning_tokens) AS reasoning_tokens, coalesce(sum(c.cost_usd), 0) AS cost_usd
    FROM calls c JOIN purge_cutoffs p ON coalesce(c.key_id, -1) = p.key_id
    WHERE c.ts < p.cutoff
    GROUP BY ALL
"""


def _load_cutoffs(con: duckdb.DuckDBPyConnection, cutoffs: dict[int | None, dt.datetime]) -> None:
    con.execute("CREATE OR REPLACE TEMP TABLE purge_cutoffs (key_id INTEGER, cutoff TIMESTAMPTZ)")
    if cutoffs:
        con.executemany("INSERT INTO purge_cutoffs VALUES (?, ?)",
                        [[_NO_KEY if key_id is None else key_id, cutoff] for key_id, cutoff in cutoffs.items()])


def expired_counts(con: duckdb.DuckDBPyConnection, cutoffs: dict[int | None, dt.datetime]) -> dict[int | None, int]:
    """Per key, how many raw calls lie before its cutoff (what a purge would delete)."""
    _load_cutoffs(con, cutoffs)
    rows = con.execute("""
        SELECT p.key_id, count(*) FROM calls c JOIN purge_cutoffs p ON coalesce(c.key_id, -1) = p.key_id
        WHERE c.ts < p.cutoff GROUP BY p.key_id
    """).fetchall()
    return {None if key_id == _NO_KEY else key_id: n for key_id, n in rows}


def purge(con: duckdb.DuckDBPyConnection, cutoffs: dict[int | None, dt.datetime],
          now: dt.datetime) -> tuple[dict[int | None, int], dict[str, int]]:
    """Roll up and delete expired calls; drop rollups and alert history past HISTORY_DAYS.
    Returns the calls purged per key (read off the rollup, not a second scan) and the totals."""
    history_cutoff = now - dt.timedelta(days=HISTORY_DAYS)
    con.execute("BEGIN")
    try:
        _load_cutoffs(con, cutoffs)
        con.execute(_ROLLUP)
        con.execute("INSERT INTO hourly_usage SELECT * FROM purge_rollup")
        per_key = con.execute("SELECT key_id, sum(calls)::BIGINT FROM purge_rollup GROUP BY key_id").fetchall()
        (calls,) = one(con.execute("""
            DELETE FROM calls USING purge_cutoffs p
            WHERE coalesce(calls.key_id, -1) = p.key_id AND calls.ts < p.cutoff
        """))
        (hours,) = one(con.execute("DELETE FROM hourly_usage WHERE hour < ?", [history_cutoff]))
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    # Alert history is control state (PostgreSQL in the shared mode), so apart from the rows.
    alerts = len(control(con).execute("DELETE FROM alerts WHERE sent_at < ? RETURNING id", [history_cutoff]).fetchall())
    return dict(per_key), {"calls": calls, "hourly_rows": hours, "alerts": alerts,
                           "batches": batches.forget_tags(con, cutoffs)}


def retention_settings(con: duckdb.DuckDBPyConnection) -> list[tuple[int, str, str, int | None]]:
    """(key id, name, plan, own retention days or None) for every key, revoked ones too."""
    return control(con).execute("SELECT id, name, plan, retention_days FROM keys ORDER BY id").fetchall()
