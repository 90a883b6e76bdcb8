"""SQL for ``alerts``: every notification attempt, delivered or not."""

from __future__ import annotations

import datetime as dt

import duckdb

_COLUMNS = ("id", "sent_at", "kind", "subject", "channel", "destination", "delivered", "error")


def record(con: duckdb.DuckDBPyConnection, sent_at: dt.datetime, kind: str, subject: str, channel: str,
           destination: str, delivered: bool, error: str | None) -> None:
    con.execute("INSERT INTO alerts (sent_at, kind, subject, channel, destination, delivered, error) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", [sent_at, kind, subject, channel, destination, delivered, error])


def recent(con: duckdb.DuckDBPyConnection, limit: int) -> list[dict]:
    cur = con.execute(f"SELECT {', '.join(_COLUMNS)} FROM alerts ORDER BY sent_at DESC, id DESC LIMIT ?", [limit])
    return [dict(zip(_COLUMNS, row)) for row in cur.fetchall()]
