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


def scrub(con: duckdb.DuckDBPyConnection, target: str, quoted: str) -> None:
    """An erased subject's identifier out of the trail: ``target`` (as entries name it) becomes
    ``kind:(erased)``, and ``quoted`` (its JSON string) in before/after values becomes "(erased)".
    The entries stay."""
    kind = target.partition(":")[0]
    db = control(con)
    db.execute("UPDATE audit SET target = ? WHERE target = ?", [f"{kind}:{ERASED}", target])
    db.execute("UPDATE audit SET before = replace(before, ?, ?), after = replace(after, ?, ?) "
               "WHERE strpos(before, ?) > 0 OR strpos(after, ?) > 0",
               [quoted, f'"{ERASED}"', quoted, f'"{ERASED}"', quoted, quoted])
