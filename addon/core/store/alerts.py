"""SQL for ``alerts``: every notification attempt, delivered or not."""

from __future__ import annotations

import datetime as dt

import duckdb

from .connection import control

_COLUMNS = ("id", "sent_at", "kind", "subject", "channel", "destination", "delivered", "error")


def budget_subject(period: str, label: str) -> str:
    """The subject line of a crossed budget's alert (a GDPR request finds a customer's by it too)."""
    return f"AiSpendTrack: {period} budget crossed for {label}"


def spike_subject(label: str) -> str:
    return f"AiSpendTrack: spend spike for {label}"


def record(con: duckdb.DuckDBPyConnection, sent_at: dt.datetime, kind: str, subject: str, channel: str,
           destination: str, delivered: bool, error: str | None, dedupe_key: str | None = None) -> None:
    control(con).execute(
        "INSERT INTO alerts (sent_at, kind, subject, channel, destination, delivered, error, dedupe_key) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [sent_at, kind, subject, channel, destination, delivered, error, dedupe_key])


def already_sent(con: duckdb.DuckDBPyConnection, dedupe_keys: list[str]) -> set[str]:
    if not dedupe_keys:
        return set()
    cur = control(con).execute(
        "SELECT DISTINCT dedupe_key FROM alerts WHERE dedupe_key IN (SELECT unnest(?::VARCHAR[]))", [dedupe_keys])
    return {key for (key,) in cur.fetchall()}


def hourly_spend(con: duckdb.DuckDBPyConnection, since: dt.datetime, scope_column: str | None) -> list[tuple]:
    """(hour, scope value, spend) per hour since ``since``; scope_column None means all calls."""
    column = {"key": "CAST(key_id AS VARCHAR)", "customer": "customer_id", "feature": "feature",
              None: "'all'"}[scope_column]
    return con.execute(f"""
        SELECT date_trunc('hour', ts::TIMESTAMP) AS hour, {column} AS scope, sum(cost_usd)::DOUBLE
        FROM usage_history WHERE ts >= ? AND cost_usd IS NOT NULL AND {column} IS NOT NULL GROUP BY ALL
    """, [since]).fetchall()


def recent(con: duckdb.DuckDBPyConnection, limit: int) -> list[dict]:
    cur = control(con).execute(f"SELECT {', '.join(_COLUMNS)} FROM alerts ORDER BY sent_at DESC, id DESC LIMIT ?",
                               [limit])
    return [dict(zip(_COLUMNS, row)) for row in cur.fetchall()]
