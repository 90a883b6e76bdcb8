"""SQL for ``web_sessions``: the report page's sign-ins, so they can expire and be ended.

The cookie holds a random session id; only its hash is stored, beside the hash of the key or
admin token it signed in with (which is checked again on every request, so a revoke ends it).
"""

from __future__ import annotations

import datetime as dt

import duckdb

from .connection import control


def start(con: duckdb.DuckDBPyConnection, id_hash: str, kind: str, credential_hash: str,
          now: dt.datetime, lifetime: dt.timedelta) -> None:
    control(con).execute("DELETE FROM web_sessions WHERE expires_at <= ?", [now])  # keeps the table small
    control(con).execute("INSERT INTO web_sessions VALUES (?, ?, ?, ?, ?)",
                [id_hash, kind, credential_hash, now, now + lifetime])


def credential(con: duckdb.DuckDBPyConnection, id_hash: str, now: dt.datetime) -> tuple[str, str] | None:
    """(kind, credential hash) of a live session, or None when it ended, expired or never was."""
    found = control(con).execute("SELECT kind, credential_hash FROM web_sessions WHERE id_hash = ? AND expires_at > ?",
                        [id_hash, now]).fetchone()
    return (found[0], found[1]) if found else None


def end(con: duckdb.DuckDBPyConnection, id_hash: str) -> None:
    control(con).execute("DELETE FROM web_sessions WHERE id_hash = ?", [id_hash])


def end_for(con: duckdb.DuckDBPyConnection, credential_hash: str) -> int:
    """End every session signed in with one key or token (on its revoke)."""
    return len(control(con).execute("DELETE FROM web_sessions WHERE credential_hash = ? RETURNING id_hash",
                           [credential_hash]).fetchall())
