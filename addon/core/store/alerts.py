"""SQL for ``alerts``: every notification attempt, delivered or not."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

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
    record_many(con, [(sent_at, kind, subject, channel, destination, delivered, error, dedupe_key)])


def record_many(con: duckdb.DuckDBPyConnection, attempts: list[tuple]) -> None:
    """Attempts as ``record`` takes them, in one statement: all recorded, or none."""
    if attempts:
        control(con).execute(
            "INSERT INTO alerts (sent_at, kind, subject, channel, destination, delivered, error, dedupe_key) VALUES "
            + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(attempts)), [v for attempt in attempts for v in attempt])


@dataclass(frozen=True)
class Attempts:
    """What was done with one alert on one channel: delivered once or not, failures, first and last try."""
    delivered: bool
    failures: int
    first: dt.datetime
    last: dt.datetime


def attempts(con: duckdb.DuckDBPyConnection, dedupe_keys: list[str]) -> dict[str, dict[str, Attempts]]:
    """Per alert (dedupe key) and channel name, the attempts recorded (alerts never tried: absent)."""
    if not dedupe_keys:
        return {}
    cur = control(con).execute(
        "SELECT dedupe_key, channel, bool_or(delivered), count(*) FILTER (WHERE NOT delivered), min(sent_at), "
        "max(sent_at) FROM alerts WHERE dedupe_key IN (SELECT unnest(?::VARCHAR[])) GROUP BY dedupe_key, channel",
        [dedupe_keys])
    found: dict[str, dict[str, Attempts]] = {}
    for key, channel, delivered, failures, first, last in cur.fetchall():
        found.setdefault(key, {})[channel] = Attempts(bool(delivered), int(failures), first, last)
    return found


def hourly_spend(con: duckdb.DuckDBPyConnection, since: dt.datetime, scope_column: str | None) -> list[tuple]:
    """(hour, scope value, spend) per hour since ``since``; scope_column None means all calls."""
    column = {"key": "CAST(key_id AS VARCHAR)", "customer": "customer_id", "feature": "feature",
              None: "'all'"}[scope_column]
    return con.execute(f"""
        SELECT date_trunc('hour', timezone('UTC', ts)) AS hour, {column} AS scope, sum(cost_usd)::DOUBLE
        FROM usage_history WHERE ts >= ? AND cost_usd IS NOT NULL AND {column} IS NOT NULL GROUP BY ALL
    """, [since]).fetchall()


def recent(con: duckdb.DuckDBPyConnection, limit: int) -> list[dict]:
    cur = control(con).execute(f"SELECT {', '.join(_COLUMNS)} FROM alerts ORDER BY sent_at DESC, id DESC LIMIT ?",
                               [limit])
    return [dict(zip(_COLUMNS, row)) for row in cur.fetchall()]
