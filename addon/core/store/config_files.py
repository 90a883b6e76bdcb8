"""SQL for ``config_files``: the shared mode's ``prices.toml`` and ``alerts.toml``, one copy per
deployment (addon/core/config_files.py says who reads them, and when)."""

from __future__ import annotations

import datetime as dt

from .connection import control


def get(con, name: str) -> tuple[str, dt.datetime] | None:
    """The file's text and when it was stored, or None when none was."""
    found = control(con).execute("SELECT text, updated_at FROM config_files WHERE name = ?", [name]).fetchone()
    return (found[0], found[1]) if found else None


def put(con, name: str, text: str, now: dt.datetime) -> None:
    control(con).execute("INSERT INTO config_files (name, text, updated_at) VALUES (?, ?, ?) ON CONFLICT (name) "
                         "DO UPDATE SET text = excluded.text, updated_at = excluded.updated_at", [name, text, now])


def names(con) -> list[str]:
    return [name for (name,) in control(con).execute("SELECT name FROM config_files ORDER BY name").fetchall()]
