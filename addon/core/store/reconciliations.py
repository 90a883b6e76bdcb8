"""SQL for ``reconciliations``: the scheduled checks against the providers' usage APIs."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import duckdb

from .connection import control

_COLUMNS = ("provider", "month_start", "until", "checked_at", "ours_usd", "theirs_usd", "difference_usd",
            "difference_percent", "days_differing", "lines")


def record(con: duckdb.DuckDBPyConnection, provider: str, month_start: dt.datetime, until: dt.datetime,
           checked_at: dt.datetime, summary: dict, differing: list[dict]) -> None:
    control(con).execute(f"INSERT INTO reconciliations ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * 10)})", [
        provider, month_start, until, checked_at, summary["ours_cost_usd"], summary["theirs_cost_usd"],
        summary["difference_usd"], summary["difference_percent"], len(differing), json.dumps(differing, default=str)])


def last_checked(con: duckdb.DuckDBPyConnection, provider: str) -> dt.datetime | None:
    row = control(con).execute("SELECT max(until) FROM reconciliations WHERE provider = ?", [provider]).fetchone()
    return row[0] if row else None


def _decoded(name: str, value):
    if isinstance(value, str) and name.endswith("_usd"):
        return Decimal(value)
    if isinstance(value, str) and name == "bucket":
        return dt.datetime.fromisoformat(value)
    return value


def latest(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """The newest reconciliation per provider, its differing lines decoded."""
    rows = control(con).execute(f"""
        SELECT {', '.join(_COLUMNS)} FROM reconciliations r
        WHERE checked_at = (SELECT max(checked_at) FROM reconciliations WHERE provider = r.provider)
        ORDER BY provider
    """).fetchall()
    found = [dict(zip(_COLUMNS, row, strict=True)) for row in rows]
    for item in found:
        # Stored as JSON text, money as decimal strings: read back as the numbers they were.
        item["lines"] = [{k: _decoded(k, v) for k, v in line.items()} for line in json.loads(item["lines"])]
    return found
