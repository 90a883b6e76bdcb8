"""SQL for ``budgets`` and the spend they are measured against."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import duckdb

from .connection import control, one

_COLUMNS = ("id", "scope", "scope_value", "daily_usd", "monthly_usd", "block")
_SCOPE_COLUMN = {"key": "CAST(key_id AS VARCHAR)", "customer": "customer_id", "feature": "feature"}


def upsert(con: duckdb.DuckDBPyConnection, scope: str, value: str | None, daily: Decimal | None,
           monthly: Decimal | None, block: bool) -> int:
    """One budget per scope: setting it again replaces it."""
    control(con).execute("DELETE FROM budgets WHERE scope = ? AND scope_value IS NOT DISTINCT FROM ?", [scope, value])
    (budget_id,) = one(control(con).execute(
        "INSERT INTO budgets (scope, scope_value, daily_usd, monthly_usd, block, created_at) "
        "VALUES (?, ?, ?, ?, ?, now()) RETURNING id", [scope, value, daily, monthly, block]))
    return budget_id


def delete(con: duckdb.DuckDBPyConnection, budget_id: int) -> bool:
    return control(con).execute("DELETE FROM budgets WHERE id = ? RETURNING id", [budget_id]).fetchone() is not None


def all_budgets(con: duckdb.DuckDBPyConnection) -> list[dict]:
    cur = control(con).execute(f"SELECT {', '.join(_COLUMNS)} FROM budgets ORDER BY id")
    return [dict(zip(_COLUMNS, row)) for row in cur.fetchall()]


def spend_since(con: duckdb.DuckDBPyConnection, scope: str, value: str | None,
                day_start: dt.datetime, month_start: dt.datetime) -> tuple[Decimal, Decimal]:
    """(spend since day_start, spend since month_start) of the calls in a budget's scope."""
    condition, params = "TRUE", []
    if scope != "all":
        condition, params = f"{_SCOPE_COLUMN[scope]} = ?", [value]
    row = one(con.execute(f"""
        SELECT coalesce(sum(cost_usd) FILTER (WHERE ts >= ?), 0), coalesce(sum(cost_usd) FILTER (WHERE ts >= ?), 0)
        FROM usage_history WHERE ts >= least(?::TIMESTAMPTZ, ?::TIMESTAMPTZ) AND {condition}
    """, [day_start, month_start, day_start, month_start, *params]))
    return Decimal(row[0]), Decimal(row[1])
