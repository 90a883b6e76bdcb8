"""SQL for the ``config`` table: settings every process must read alike (docs/architecture.md)."""

from __future__ import annotations

import datetime as dt

import duckdb

from .connection import control


def get(con: duckdb.DuckDBPyConnection, name: str) -> str | None:
    try:
        found = control(con).execute("SELECT value FROM config WHERE name = ?", [name]).fetchone()
    except duckdb.CatalogException:  # a read-only open of a file no newer version has written yet
        return None
    return found[0] if found else None


def put(con: duckdb.DuckDBPyConnection, name: str, value: str, now: dt.datetime) -> None:
    control(con).execute("INSERT INTO config (name, value, updated_at) VALUES (?, ?, ?) ON CONFLICT (name) "
                         "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at", [name, value, now])


def all_values(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[str, dt.datetime]]:
    try:
        rows = control(con).execute("SELECT name, value, updated_at FROM config").fetchall()
    except duckdb.CatalogException:
        return {}
    return {name: (value, at) for name, value, at in rows}
