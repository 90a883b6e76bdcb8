"""SQL for ``sso_users``: who signed in to the page through the identity provider (web/sso.py).

Role and teams are the ones computed from the user's groups at their last sign-in, so a user
taken out of a group loses the role at the next sign-in (and a user left with no role is kept
with role NULL: their open sessions then see nothing). The groups that gave them (those the
settings mapped then) are kept too: each request computes the role from them again under the
settings of the moment (web/auth.py).
"""

from __future__ import annotations

import datetime as dt
import json

import duckdb

from .connection import control


def signed_in(con: duckdb.DuckDBPyConnection, sub: str, name: str | None, email: str | None, role: str | None,
              teams: tuple[str, ...], groups: tuple[str, ...], now: dt.datetime) -> None:
    """``groups``: those of the user's groups the settings mapped to a role or team."""
    params = [name, email, role, json.dumps(list(teams)), json.dumps(list(groups)), now, sub]
    if control(con).execute("SELECT 1 FROM sso_users WHERE sub = ?", [sub]).fetchone():
        control(con).execute("UPDATE sso_users SET name = ?, email = ?, role = ?, teams = ?, groups = ?, "
                             "signed_in_at = ? WHERE sub = ?", params)
    else:
        control(con).execute("INSERT INTO sso_users (name, email, role, teams, groups, signed_in_at, sub) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)", params)


def find(con: duckdb.DuckDBPyConnection, sub: str) -> dict | None:
    """name, email, role (None: none), teams and mapped groups (None: signed in before they were
    kept) of a user, or None when the sub never signed in."""
    row = control(con).execute("SELECT name, email, role, teams, groups FROM sso_users WHERE sub = ?",
                               [sub]).fetchone()
    if row is None:
        return None
    return {"name": row[0], "email": row[1], "role": row[2], "teams": tuple(json.loads(row[3])),
            "groups": tuple(json.loads(row[4])) if row[4] is not None else None}


def named(con: duckdb.DuckDBPyConnection, who: str) -> list[str]:
    """The subs of the users whose sub, or e-mail, is ``who``."""
    return [sub for (sub,) in control(con).execute("SELECT sub FROM sso_users WHERE sub = ? OR email = ? ORDER BY sub",
                                                   [who, who]).fetchall()]
