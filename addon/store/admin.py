"""SQL for ``admin_tokens``: stored only as hashes, like keys."""

from __future__ import annotations

import duckdb


def add(con: duckdb.DuckDBPyConnection, name: str, token_hash: str) -> int:
    (token_id,) = con.execute(
        "INSERT INTO admin_tokens (name, token_hash, created_at) VALUES (?, ?, now()) RETURNING id",
        [name, token_hash]).fetchone()
    return token_id


def is_active(con: duckdb.DuckDBPyConnection, token_hash: str) -> bool:
    return con.execute("SELECT count(*) FROM admin_tokens WHERE token_hash = ? AND revoked_at IS NULL",
                       [token_hash]).fetchone()[0] > 0
