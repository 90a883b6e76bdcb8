"""SQL for ``admin_tokens``: stored only as hashes, like keys."""

from __future__ import annotations

import duckdb

from .connection import control, one


def add(con: duckdb.DuckDBPyConnection, name: str, token_hash: str) -> int:
    (token_id,) = one(control(con).execute(
        "INSERT INTO admin_tokens (name, token_hash, created_at) VALUES (?, ?, now()) RETURNING id",
        [name, token_hash]))
    return token_id


def active_id(con: duckdb.DuckDBPyConnection, token_hash: str) -> int | None:
    """The id of the active token with this hash, or None."""
    row = control(con).execute("SELECT id FROM admin_tokens WHERE token_hash = ? AND revoked_at IS NULL",
                               [token_hash]).fetchone()
    return row[0] if row else None


def listing(con: duckdb.DuckDBPyConnection) -> list[dict]:
    cur = control(con).execute("SELECT id, name, created_at, revoked_at FROM admin_tokens ORDER BY id")
    return [dict(zip(("id", "name", "created_at", "revoked_at"), row)) for row in cur.fetchall()]


def revoke(con: duckdb.DuckDBPyConnection, token_id: int) -> str | None:
    """Revoke a token; its hash, or None when there is no such token or it was revoked already."""
    found = control(con).execute("UPDATE admin_tokens SET revoked_at = now() WHERE id = ? AND revoked_at IS NULL "
                        "RETURNING token_hash", [token_id]).fetchone()
    return found[0] if found else None
