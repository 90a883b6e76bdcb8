"""SQL for ``sso_users``: who signed in to the page through the identity provider (web/sso.py).

Role and teams are the ones computed from the user's groups at their last sign-in, so a user
taken out of a group loses the role at the next sign-in (and a user left with no role is kept
with role NULL: their open sessions then see nothing).
"""

from __future__ import annotations

import datetime as dt
import json

import duckdb

from .connection import control


def signed_in(con: duckdb.DuckDBPyConnection, sub: str, name: str | None, email: str | None, role: str | None,
              teams: tuple[str, ...], now: dt.datetime) -> None:
    params = [name, email, role, json.dumps(list(teams)), now, sub]
    if control(con).execute("SELECT 1 FROM sso_users WHERE sub = ?", [sub]).fetchone():
        control(con).execute("UPDATE sso_users SET name = ?, email = ?, role = ?, teams = ?, signed_in_at = ? "
                             "WHERE sub = ?", params)
    else:
        control(con).execute("INSERT INTO sso_users (name, email, role, teams, signed_in_at, sub) "
                             "VALUES (?, ?, ?, ?, ?, ?)", params)


def find(con: duckdb.DuckDBPyConnection, sub: str) -> dict | None:
    """name, email, role (None: none) and teams of a user, or None when the sub never signed in."""
    row = control(con).execute("SELECT name, email, role, teams FROM sso_users WHERE sub = ?", [sub]).fetchone()
    if row is None:
        return None
    return {"name": row[0], "email": row[1], "role": row[2], "teams": tuple(json.loads(row[3]))}
