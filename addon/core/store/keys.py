"""SQL for the ``keys`` table. Keys are stored only as hashes (see addon/core/keys.py)."""

from __future__ import annotations

import datetime as dt

import duckdb

from .connection import control, one

# Key ids are INTEGER columns (in PostgreSQL too): a number outside this range names no key, and
# binding it would fail the query instead.
MAX_ID = 2**31 - 1


def parse_id(value: object) -> int:
    """A key id given as text or as a number; ValueError says what is wrong."""
    try:
        key_id = int(str(value).strip())  # str(): so that neither 1.5 nor True passes as a whole number
    except ValueError:
        key_id = 0
    if not 1 <= key_id <= MAX_ID:
        raise ValueError(f"key must be a key id (a number from 1 to {MAX_ID}, see `aispendtrack keys list`), "
                         f"got {str(value)[:100]!r}.")
    return key_id


_COLUMNS = ("id", "name", "prefix", "plan", "per_hour_limit", "per_month_limit", "retention_days", "created_at",
            "revoked_at", "team")


def add(con: duckdb.DuckDBPyConnection, name: str, key_hash: str, prefix: str, plan: str,
        team_id: int | None = None) -> int:
    (key_id,) = one(control(con).execute(
        "INSERT INTO keys (name, key_hash, prefix, plan, created_at, team_id) VALUES (?, ?, ?, ?, now(), ?) "
        "RETURNING id", [name, key_hash, prefix, plan, team_id]))
    return key_id


# The setters below take a key the caller found (cli/keys.py names a missing one to the user).
def set_plan(con: duckdb.DuckDBPyConnection, key_id: int, plan: str) -> None:
    control(con).execute("UPDATE keys SET plan = ? WHERE id = ?", [plan, key_id])


def set_limits(con: duckdb.DuckDBPyConnection, key_id: int, per_hour: int | None, per_month: int | None) -> None:
    """Set a key's own limits (None: back to its plan's)."""
    control(con).execute("UPDATE keys SET per_hour_limit = ?, per_month_limit = ? WHERE id = ?",
                         [per_hour, per_month, key_id])


def set_retention(con: duckdb.DuckDBPyConnection, key_id: int, days: int | None) -> None:
    """Set how many days a key's raw calls are kept (None: as its plan says)."""
    control(con).execute("UPDATE keys SET retention_days = ? WHERE id = ?", [days, key_id])


def active(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int, str, int | None, int | None]]:
    """(key_hash, id, plan, per_hour_limit, per_month_limit) of every key that may be used now."""
    return control(con).execute("SELECT key_hash, id, plan, per_hour_limit, per_month_limit FROM keys "
                       "WHERE revoked_at IS NULL").fetchall()


def all_keys(con: duckdb.DuckDBPyConnection) -> list[dict]:
    selected = ", ".join(f"keys.{c}" for c in _COLUMNS[:-1])
    cur = control(con).execute(f"SELECT {selected}, teams.name FROM keys LEFT JOIN teams ON teams.id = keys.team_id "
                               f"ORDER BY keys.id")
    return [dict(zip(_COLUMNS, values)) for values in cur.fetchall()]


def get(con: duckdb.DuckDBPyConnection, key_id: int) -> dict | None:
    """One key as ``all_keys`` lists it, or None."""
    return next((k for k in all_keys(con) if k["id"] == key_id), None)


def labels(con: duckdb.DuckDBPyConnection) -> dict[int, str]:
    """What people call each key: its name, with its id when another key has the same name."""
    cur = control(con).execute("SELECT id, name, count(*) OVER (PARTITION BY name) FROM keys")
    return {key_id: name if same == 1 else f"{name} (id {key_id})" for key_id, name, same in cur.fetchall()}


def ids_named(con: duckdb.DuckDBPyConnection, name: str) -> list[int]:
    """The ids of the keys with this name (names need not be unique)."""
    return [key_id for (key_id,) in control(con).execute("SELECT id FROM keys WHERE name = ? ORDER BY id",
                                                         [name]).fetchall()]


def revoke(con: duckdb.DuckDBPyConnection, key_id: int) -> tuple[dt.datetime, bool] | None:
    """Revoke a key: (when it was revoked, whether by this call; an earlier revoke is kept), or None
    if there is no such key."""
    row = control(con).execute("SELECT revoked_at FROM keys WHERE id = ?", [key_id]).fetchone()
    if row is None:
        return None
    if row[0] is not None:
        return row[0], False
    (revoked_at,) = one(control(con).execute(
        "UPDATE keys SET revoked_at = now() WHERE id = ? RETURNING revoked_at", [key_id]))
    return revoked_at, True


def count(con: duckdb.DuckDBPyConnection) -> int:
    return one(control(con).execute("SELECT count(*) FROM keys"))[0]


def find_active(con: duckdb.DuckDBPyConnection, key_hash: str) -> int | None:
    row = control(con).execute("SELECT id FROM keys WHERE key_hash = ? AND revoked_at IS NULL", [key_hash]).fetchone()
    return row[0] if row else None
