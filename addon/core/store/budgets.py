"""SQL for ``budgets`` and the spend they are measured against."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import duckdb

from .connection import control, one
from .teams import IN_TEAM

_COLUMNS = ("id", "scope", "scope_value", "daily_usd", "monthly_usd", "block", "key_id")
_SCOPE_COLUMN = {"key": "CAST(key_id AS VARCHAR)", "customer": "customer_id", "feature": "feature"}


def find(con: duckdb.DuckDBPyConnection, scope: str, value: str | None, key_id: int | None) -> dict | None:
    """The one budget of a scope (and key, for a customer or feature), or None."""
    row = control(con).execute(f"SELECT {', '.join(_COLUMNS)} FROM budgets WHERE scope = ? AND scope_value IS NOT "
                               f"DISTINCT FROM ? AND key_id IS NOT DISTINCT FROM ?", [scope, value, key_id]).fetchone()
    return dict(zip(_COLUMNS, row)) if row else None


def add(con: duckdb.DuckDBPyConnection, scope: str, value: str | None, key_id: int | None,
        daily: Decimal | None, monthly: Decimal | None, block: bool) -> int:
    (budget_id,) = one(control(con).execute(
        "INSERT INTO budgets (scope, scope_value, key_id, daily_usd, monthly_usd, block, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, now()) RETURNING id", [scope, value, key_id, daily, monthly, block]))
    return budget_id


def update(con: duckdb.DuckDBPyConnection, budget_id: int, daily: Decimal | None, monthly: Decimal | None,
           block: bool) -> None:
    """Change a budget in place: its id, and so its alert history and the proxy's count, stay."""
    control(con).execute("UPDATE budgets SET daily_usd = ?, monthly_usd = ?, block = ? WHERE id = ?",
                         [daily, monthly, block, budget_id])


def delete(con: duckdb.DuckDBPyConnection, budget_id: int) -> bool:
    return control(con).execute("DELETE FROM budgets WHERE id = ? RETURNING id", [budget_id]).fetchone() is not None


def rename_team(con: duckdb.DuckDBPyConnection, old: str, new: str) -> None:
    """A team budget names its team: renamed with it, so it keeps its id, spend and alerts."""
    control(con).execute("UPDATE budgets SET scope_value = ? WHERE scope = 'team' AND scope_value = ?", [new, old])


def delete_team(con: duckdb.DuckDBPyConnection, name: str) -> list[int]:
    """Delete a deleted team's budgets; returns their ids."""
    cur = control(con).execute("DELETE FROM budgets WHERE scope = 'team' AND scope_value = ? RETURNING id", [name])
    return sorted(budget_id for (budget_id,) in cur.fetchall())


def all_budgets(con: duckdb.DuckDBPyConnection) -> list[dict]:
    cur = control(con).execute(f"SELECT {', '.join(_COLUMNS)} FROM budgets ORDER BY id")
    return [dict(zip(_COLUMNS, row)) for row in cur.fetchall()]


def spend_since(con: duckdb.DuckDBPyConnection, scope: str, value: str | None, key_id: int | None,
                day_start: dt.datetime, month_start: dt.datetime) -> tuple[Decimal, Decimal]:
    """(spend since day_start, spend since month_start) of the calls in a budget's scope (of its
    key, for a customer or feature budget that has one): what is known; calls without a price
    count nothing (``spend_and_unpriced_since`` counts them)."""
    today, month, _, _ = spend_and_unpriced_since(con, scope, value, key_id, day_start, month_start)
    return today, month


def keys_spend_since(con: duckdb.DuckDBPyConnection, key_ids: frozenset[int], day_start: dt.datetime,
                     month_start: dt.datetime) -> tuple[Decimal, Decimal]:
    """(spend since day_start, since month_start) of these keys' calls: a team budget's part that
    moves with keys moved into or out of its team."""
    if not key_ids:
        return Decimal(0), Decimal(0)
    today, month, _, _ = _spend(con, f"key_id IN ({', '.join('?' * len(key_ids))})", sorted(key_ids),
                                day_start, month_start)
    return today, month


def spend_and_unpriced_since(con: duckdb.DuckDBPyConnection, scope: str, value: str | None, key_id: int | None,
                             day_start: dt.datetime, month_start: dt.datetime) -> tuple[Decimal, Decimal, int, int]:
    """The spend of the calls in a budget's scope since day_start and since month_start, and the
    calls among them whose cost nobody knows (shown beside the spend, which would read as complete
    without them), in one pass over the 15-minute rollups."""
    return _spend(con, *_in_scope(scope, value, key_id), day_start, month_start)


def _spend(con: duckdb.DuckDBPyConnection, conditions: str, params: list, day_start: dt.datetime,
           month_start: dt.datetime) -> tuple[Decimal, Decimal, int, int]:
    row = one(con.execute(f"""
        SELECT coalesce(sum(cost_usd) FILTER (WHERE bucket >= ?), 0),
               coalesce(sum(cost_usd) FILTER (WHERE bucket >= ?), 0),
               coalesce(sum(unpriced_calls) FILTER (WHERE bucket >= ?), 0),
               coalesce(sum(unpriced_calls) FILTER (WHERE bucket >= ?), 0)
        FROM rollups WHERE bucket >= least(?::TIMESTAMPTZ, ?::TIMESTAMPTZ) AND {conditions}
    """, [day_start, month_start, day_start, month_start, day_start, month_start, *params]))
    return Decimal(row[0]), Decimal(row[1]), int(row[2]), int(row[3])


def _in_scope(scope: str, value: str | None, key_id: int | None) -> tuple[str, list[object]]:
    """The condition on rollup rows of a budget's scope, and its parameters."""
    conditions = ["TRUE"]
    params: list[object] = []
    if scope == "team":  # the keys in the team now, as reports count it
        conditions.append(IN_TEAM)
        params.append(value)
    elif scope != "all":
        conditions.append(f"{_SCOPE_COLUMN[scope]} = ?")
        params.append(value)
    if key_id is not None:
        conditions.append("key_id = ?")
        params.append(key_id)
    return " AND ".join(conditions), params
