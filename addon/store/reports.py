"""SQL for reports, pages of calls, exports and repricing. Input is a validated spec (addon/reports.py)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal

import duckdb

from ..reports import ReportSpec, Selection
from .calls import COLUMN_NAMES, REPRICE_COLUMNS

EXPORT_COLUMNS = COLUMN_NAMES + REPRICE_COLUMNS
_TIME_FORMATS = {"day": "%Y-%m-%d", "hour": "%Y-%m-%d %H:00", "month": "%Y-%m"}
_COLUMN_OF = {"model": "model", "provider": "provider", "customer": "customer_id", "feature": "feature",
              "key": "key_id"}
_TOKENS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")
_METRICS = f"""
    count(*) AS calls,
    count(*) FILTER (WHERE status >= 400 OR outcome <> 'completed') AS errors,
    count(*) FILTER (WHERE NOT priced AND usage_source <> 'none') AS unpriced_calls,
    {", ".join(f"coalesce(sum({t}), 0)::BIGINT AS {t}" for t in _TOKENS)},
    sum(cost_usd) AS cost_usd,
    quantile_cont(latency_ms, 0.5) AS p50_latency_ms,
    quantile_cont(latency_ms, 0.95) AS p95_latency_ms"""
_METRIC_NAMES = ("calls", "errors", "unpriced_calls", *_TOKENS, "cost_usd", "p50_latency_ms", "p95_latency_ms")


def dimension_name(dimension: str) -> str:
    """The key a dimension has in a group object: ``customer`` -> ``customer_id``, ``day`` -> ``day``."""
    return _COLUMN_OF.get(dimension, dimension)


def where(selection: Selection) -> tuple[str, list]:
    clauses, params = ["TRUE"], []
    for column, value in (("customer_id", selection.customer_id), ("feature", selection.feature),
                          ("model", selection.model), ("key_id", selection.key_id)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if selection.since is not None:
        clauses.append("ts >= ?")
        params.append(selection.since)
    if selection.until is not None:
        clauses.append("ts < ?")
        params.append(selection.until)
    return " AND ".join(clauses), params


def report(con: duckdb.DuckDBPyConnection, spec: ReportSpec) -> tuple[list[dict], dict]:
    """Groups ordered by time (time dimensions) or by cost, and the total, from one scan."""
    dims = [_dimension_sql(d, spec.selection.tz) for d in spec.by]
    names = [dimension_name(d) for d in spec.by]
    condition, params = where(spec.selection)
    grouping_sets = f"GROUPING SETS (({', '.join(dims)}), ())"
    sql = (f"SELECT {', '.join(f'{d} AS {n}' for d, n in zip(dims, names))}, "
           f"grouping({', '.join(dims)}) AS is_total, {_METRICS} "
           f"FROM calls WHERE {condition} GROUP BY {grouping_sets}")
    rows = [dict(zip([*names, "is_total", *_METRIC_NAMES], r)) for r in con.execute(sql, params).fetchall()]
    total = next((r for r in rows if r["is_total"]), None) or _empty_total()
    groups = [r for r in rows if not r["is_total"] and r["calls"]]
    for row in [*groups, total]:
        row.pop("is_total", None)
        row["share"] = _share(row["cost_usd"], total["cost_usd"])
    time_dims = [n for d, n in zip(spec.by, names) if d in _TIME_FORMATS]
    groups.sort(key=lambda r: (*[r[n] for n in time_dims], -(r["cost_usd"] or 0), -r["calls"],
                               *[str(r[n]) for n in names]))
    for name in names:
        total[name] = None
    return groups, total


def calls_page(con: duckdb.DuckDBPyConnection, selection: Selection, limit: int,
               after: tuple[dt.datetime, uuid.UUID] | None) -> list[dict]:
    """Newest first; ``after`` is the (ts, id) of the last row of the previous page (keyset paging)."""
    condition, params = where(selection)
    if after is not None:
        condition += " AND (ts < ? OR (ts = ? AND id < ?))"
        params += [after[0], after[0], after[1]]
    cur = con.execute(f"SELECT {', '.join(EXPORT_COLUMNS)} FROM calls WHERE {condition} "
                      f"ORDER BY ts DESC, id DESC LIMIT ?", [*params, limit])
    return [dict(zip(EXPORT_COLUMNS, values)) for values in cur.fetchall()]


def export_sql(selection: Selection) -> tuple[str, list]:
    """Rows in storage order (roughly by time): no ORDER BY, so memory stays flat at any size."""
    condition, params = where(selection)
    return f"SELECT {', '.join(EXPORT_COLUMNS)} FROM calls WHERE {condition}", params


def copy_out(con: duckdb.DuckDBPyConnection, selection: Selection, path: str, fmt: str) -> None:
    """DuckDB writes the file itself, streaming: csv, jsonl (one object a line), json (an array), parquet."""
    options = {"csv": "FORMAT csv, HEADER true", "jsonl": "FORMAT json", "json": "FORMAT json, ARRAY true",
               "parquet": "FORMAT parquet"}[fmt]
    sql, params = export_sql(selection)
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"COPY ({sql}) TO '{_quote(path)}' ({options})", params)


def export_rows(con: duckdb.DuckDBPyConnection, selection: Selection, batch: int = 10_000) -> Iterator[list[tuple]]:
    """Batches of row tuples (columns as EXPORT_COLUMNS), for a response streamed by Python."""
    sql, params = export_sql(selection)
    cur = con.execute(sql, params)
    while rows := cur.fetchmany(batch):
        yield rows


def count(con: duckdb.DuckDBPyConnection, selection: Selection) -> int:
    condition, params = where(selection)
    return con.execute(f"SELECT count(*) FROM calls WHERE {condition}", params).fetchone()[0]


_REPRICE_INPUT = ("id", "ts", "provider", "model", "input_tokens", "cache_read_tokens", "cache_write_tokens",
                  "cache_write_1h_tokens", "output_tokens", "reasoning_tokens", "web_search_requests",
                  "cost_usd", "price_source")


def reprice_inputs(con: duckdb.DuckDBPyConnection, selection: Selection) -> Iterator[dict]:
    condition, params = where(selection)
    cur = con.execute(f"SELECT {', '.join(_REPRICE_INPUT)} FROM calls WHERE {condition} "
                      f"AND usage_source <> 'none'", params)
    while rows := cur.fetchmany(50_000):
        yield from (dict(zip(_REPRICE_INPUT, r)) for r in rows)


def apply_reprice(con: duckdb.DuckDBPyConnection, changes: list[tuple[uuid.UUID, Decimal | None, str | None]]) -> None:
    """Set new costs, keeping the old cost and its price source in previous_*."""
    if not changes:
        return
    ids, costs, sources = (list(column) for column in zip(*changes))
    con.execute("""
        UPDATE calls SET previous_cost_usd = calls.cost_usd, previous_price_source = calls.price_source,
                         cost_usd = n.cost, priced = n.cost IS NOT NULL, price_source = n.source,
                         repriced_at = now()
        FROM (SELECT unnest(?::UUID[]) AS id, unnest(?::DECIMAL(18, 10)[]) AS cost,
                     unnest(?::VARCHAR[]) AS source) n
        WHERE calls.id = n.id
    """, [ids, costs, sources])


def _dimension_sql(dimension: str, tz: str) -> str:
    if dimension in _TIME_FORMATS:
        # tz was validated against the IANA database (addon/reports.py), so it is safe to inline.
        return f"strftime(timezone('{_quote(tz)}', ts), '{_TIME_FORMATS[dimension]}')"
    return _COLUMN_OF[dimension]


def _share(cost: Decimal | None, total: Decimal | None) -> float | None:
    if cost is None or not total:
        return None
    return float(cost / total)


def _empty_total() -> dict:
    return {name: 0 for name in _METRIC_NAMES} | {"cost_usd": None, "p50_latency_ms": None,
                                                  "p95_latency_ms": None}


def _quote(text: str) -> str:
    return text.replace("'", "''")
