"""SQL for ``audit``: the changes made through the CLI and the API (addon/core/audit.py records them)."""

from __future__ import annotations

import datetime as dt

import duckdb

from .connection import control

_COLUMNS = ("id", "changed_at", "actor", "action", "target", "before", "after")
ERASED = "(erased)"


def add(con: duckdb.DuckDBPyConnection, actor: str, action: str, target: str, before: str | None,
        after: str | None) -> None:
    control(con).execute("INSERT INTO audit (changed_at, actor, action, target, before, after) "
                         "VALUES (now(), ?, ?, ?, ?, ?)", [actor, action, target, before, after])


def entries(con: duckdb.DuckDBPyConnection, since: dt.datetime | None) -> list[dict]:
    """Oldest first, from ``since`` on."""
    cur = control(con).execute(f"SELECT {', '.join(_COLUMNS)} FROM audit WHERE changed_at >= ? ORDER BY id",
                               [since or dt.datetime(1, 1, 1, tzinfo=dt.UTC)])
    return [dict(zip(_COLUMNS, row)) for row in cur.fetchall()]


def naming(con: duckdb.DuckDBPyConnection, target: str, quoted: str) -> list[tuple[int, str, str | None, str | None]]:
    """(id, target, before, after) of the entries about ``target`` or holding ``quoted`` (a JSON
    string) in their values: those an erasure may have to change."""
    cur = control(con).execute("SELECT id, target, before, after FROM audit "
                               "WHERE target = ? OR strpos(before, ?) > 0 OR strpos(after, ?) > 0",
                               [target, quoted, quoted])
    return cur.fetchall()


def rewrite(con: duckdb.DuckDBPyConnection, entry_id: int, target: str, before: str | None,
            after: str | None) -> None:
    """An entry's subject taken out by a GDPR erase: the only change an entry ever gets."""
    control(con).execute("UPDATE audit SET target = ?, before = ?, after = ? WHERE id = ?",
                         [target, before, after, entry_id])
