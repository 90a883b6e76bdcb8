"""SQL for retention: deleting raw calls past their cutoff (whole UTC hours), and old rollups.

The calls' sums are in ``rollups`` since they were written (store/rollups.py) and stay there, so
reports, budgets, quotas and spike history (``usage_history``) go on counting purged calls.
"""

from __future__ import annotations

import datetime as dt

import duckdb

from . import batches, raw_horizon, rollups
from .connection import control, one
from .transaction import transaction

# Rollups and alert history are kept this long: a year of budgets, quotas and spike baselines.
HISTORY_DAYS = 400
_NO_KEY = -1  # calls.key_id is NULL only for rows from before keys existed; they follow the default cutoff

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
    """Delete expired calls; drop rollups and alert history past HISTORY_DAYS.
    Returns the calls purged per key and the totals."""
    # On the start of the widest rollup bucket (a week): each tier drops whole buckets of the same
    # calls and the tiers go on agreeing (a cut week would leave its weekly row whole).
    widest = max(tier.seconds for tier in rollups.TIERS)
    history_cutoff = rollups.bucket_start(now - dt.timedelta(days=HISTORY_DAYS), widest)
    with transaction(con):
        _load_cutoffs(con, cutoffs)
        per_key = con.execute("""
            SELECT p.key_id, count(*) FROM calls c JOIN purge_cutoffs p ON coalesce(c.key_id, -1) = p.key_id
            WHERE c.ts < p.cutoff GROUP BY p.key_id""").fetchall()
        # Raw rows and rollups stop agreeing where either loses rows: said first (raw_horizon.py),
        # as in the shared mode it is stored apart from the rows.
        (oldest_rollup,) = one(con.execute("SELECT min(bucket) FROM rollups"))
        dropped = [history_cutoff] if oldest_rollup is not None and oldest_rollup < history_cutoff else []
        purged = [cutoffs[None if k == _NO_KEY else k] for k, n in per_key if n]
        if dropped or purged:
            raw_horizon.move(con, max(dropped + purged), now)
        (calls,) = one(con.execute("""
            DELETE FROM calls USING purge_cutoffs p
            WHERE coalesce(calls.key_id, -1) = p.key_id AND calls.ts < p.cutoff
        """))
        hours = _drop_history(con, history_cutoff) if dropped else 0
    # Alert history is control state (PostgreSQL in the shared mode), so apart from the rows.
    alerts = len(control(con).execute("DELETE FROM alerts WHERE sent_at < ? RETURNING id", [history_cutoff]).fetchall())
    totals = {"calls": calls, "hourly_rows": hours, "alerts": alerts, "batches": batches.forget_tags(con, cutoffs)}
    return {None if k == _NO_KEY else k: n for k, n in per_key}, totals


def _drop_history(con: duckdb.DuckDBPyConnection, cutoff: dt.datetime) -> int:
    """Drop the rollups before ``cutoff`` but the sums of calls still kept raw (a key kept forever:
    reports read only rollups before the horizon, so dropping those lost the calls from every
    report but --exact); the coarser tiers' rows of the buckets that lost some are summed again
    from what stays. Returns the 15-minute rows dropped. In the caller's transaction."""
    con.execute(f"""CREATE OR REPLACE TEMP TABLE history_kept AS
                    SELECT DISTINCT {rollups.bucket_sql()} AS bucket, coalesce(key_id, -1) AS key_id
                    FROM calls WHERE ts < ?""", [cutoff])
    con.execute("""CREATE OR REPLACE TEMP TABLE history_dropped AS
                   SELECT DISTINCT bucket, coalesce(key_id, -1) AS key_id FROM rollups r WHERE bucket < ?
                   AND NOT EXISTS (SELECT 1 FROM history_kept k
                                   WHERE k.bucket = r.bucket AND k.key_id = coalesce(r.key_id, -1))""", [cutoff])
    (dropped,) = one(con.execute("DELETE FROM rollups USING history_dropped d WHERE rollups.bucket = d.bucket "
                                 "AND coalesce(rollups.key_id, -1) = d.key_id"))
    if dropped:  # once a week's worth: the rows kept raw stay old, and are left alone after the first
        for tier in rollups.DERIVED:
            # No 15-minute row was appended: their customer order stands (customer_order.reopen).
            rollups.derive(con, rollups.pairs("history_dropped", tier), tier, reopen=False)
    con.execute("DROP TABLE history_kept")
    con.execute("DROP TABLE history_dropped")
    return dropped


def retention_settings(con: duckdb.DuckDBPyConnection) -> list[tuple[int, str, str, int | None]]:
    """(key id, name, plan, own retention days or None) for every key, revoked ones too."""
    return control(con).execute("SELECT id, name, plan, retention_days FROM keys ORDER BY id").fetchall()
