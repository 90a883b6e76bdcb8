"""SQL for ``teams`` and the key's ``team_id``. A key belongs to at most one team.

Calls and rollups hold no team: a report finds a call's team through its key when it reads
(``TEAM_OF_KEY``), so moving a key to another team moves its whole history with it.
"""

from __future__ import annotations

import duckdb

from .connection import control, one

# The team name of the row's ``key_id`` (NULL: no key, or a key in no team), for a report's
# SELECT over calls or rollups; ``keys`` and ``teams`` are the control schema's in the shared mode.
TEAM_OF_KEY = "(SELECT t.name FROM keys k JOIN teams t ON t.id = k.team_id WHERE k.id = key_id)"
# The calls of one team's keys (the team's name as the parameter).
IN_TEAM = "key_id IN (SELECT k.id FROM keys k JOIN teams t ON t.id = k.team_id WHERE t.name = ?)"



def in_teams(count: int) -> str:
    """The calls of several teams' keys (their names as ``count`` parameters); of no team: none."""
    if count == 0:
        return "FALSE"
    return ("key_id IN (SELECT k.id FROM keys k JOIN teams t ON t.id = k.team_id WHERE t.name IN ("
            + ", ".join("?" * count) + "))")


def add(con: duckdb.DuckDBPyConnection, name: str) -> int | None:
    """The new team's id, or None when a team has that name already."""
    if find(con, name) is not None:
        return None
    (team_id,) = one(control(con).execute("INSERT INTO teams (name, created_at) VALUES (?, now()) RETURNING id",
                                          [name]))
    return team_id


def find(con: duckdb.DuckDBPyConnection, name: str) -> int | None:
    row = control(con).execute("SELECT id FROM teams WHERE name = ?", [name]).fetchone()
    return row[0] if row else None


def of_key(con: duckdb.DuckDBPyConnection, key_id: int) -> str | None:
    """The name of the key's team (None: in none, or no such key)."""
    row = control(con).execute("SELECT t.name FROM keys k JOIN teams t ON t.id = k.team_id WHERE k.id = ?",
                               [key_id]).fetchone()
    return row[0] if row else None


def all_teams(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """Every team with its keys' count (revoked ones too: their calls still count as the team's)."""
    cur = control(con).execute("SELECT t.id, t.name, t.created_at, count(k.id), t.per_hour_limit, t.per_month_limit "
                               "FROM teams t LEFT JOIN keys k ON k.team_id = t.id "
                               "GROUP BY t.id, t.name, t.created_at, t.per_hour_limit, t.per_month_limit "
                               "ORDER BY t.name")
    return [dict(zip(("id", "name", "created_at", "keys", "per_hour_limit", "per_month_limit"), row))
            for row in cur.fetchall()]


def limits(con: duckdb.DuckDBPyConnection, team_id: int) -> tuple[int | None, int | None]:
    """(per_hour_limit, per_month_limit) of the team; None: no such limit."""
    return one(control(con).execute("SELECT per_hour_limit, per_month_limit FROM teams WHERE id = ?", [team_id]))


def set_limits(con: duckdb.DuckDBPyConnection, team_id: int, per_hour: int | None, per_month: int | None) -> None:
    control(con).execute("UPDATE teams SET per_hour_limit = ?, per_month_limit = ? WHERE id = ?",
                         [per_hour, per_month, team_id])


def members(con: duckdb.DuckDBPyConnection) -> list[tuple[int, int, str, int | None, int | None]]:
    """(key id, team id, team name, team's per_hour_limit, per_month_limit) of every key in a team,
    revoked ones too (their calls this hour still count as the team's)."""
    return control(con).execute("SELECT k.id, t.id, t.name, t.per_hour_limit, t.per_month_limit "
                                "FROM keys k JOIN teams t ON t.id = k.team_id").fetchall()


def rename(con: duckdb.DuckDBPyConnection, team_id: int, name: str) -> None:
    control(con).execute("UPDATE teams SET name = ? WHERE id = ?", [name, team_id])


def key_ids(con: duckdb.DuckDBPyConnection, team_id: int) -> list[int]:
    return [k for (k,) in control(con).execute("SELECT id FROM keys WHERE team_id = ? ORDER BY id",
                                               [team_id]).fetchall()]


def delete(con: duckdb.DuckDBPyConnection, team_id: int) -> list[int]:
    """Delete a team, its keys moved out of any team first; returns those keys' ids."""
    moved = key_ids(con, team_id)
    if moved:
        control(con).execute("UPDATE keys SET team_id = NULL WHERE team_id = ?", [team_id])
    control(con).execute("DELETE FROM teams WHERE id = ?", [team_id])
    return moved


def move_key(con: duckdb.DuckDBPyConnection, key_id: int, team_id: int | None) -> bool:
    """Put a key in a team (None: in none); False when there is no such key."""
    row = control(con).execute("UPDATE keys SET team_id = ? WHERE id = ? RETURNING id", [team_id, key_id]).fetchone()
    return row is not None


def names_of_keys(con: duckdb.DuckDBPyConnection) -> dict[int, str]:
    """key id -> its team's name, for the keys in a team."""
    cur = control(con).execute("SELECT k.id, t.name FROM keys k JOIN teams t ON t.id = k.team_id")
    return dict(cur.fetchall())
