"""SQL for ``price_snapshots``: each version of the list-price data fetched, one table per deployment
(in PostgreSQL in the shared mode). addon/core/price_data.py says who fetches, and when."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from .connection import control


@dataclass(frozen=True)
class Stored:
    id: str
    source: str
    fetched_at: dt.datetime
    checked_at: dt.datetime
    models: int


_COLUMNS = "id, source, fetched_at, checked_at, models"


def latest(con) -> Stored | None:
    """The data last fetched (the one in use), without its document."""
    found = control(con).execute(f"SELECT {_COLUMNS} FROM price_snapshots "
                                 "ORDER BY checked_at DESC, fetched_at DESC LIMIT 1").fetchone()
    return Stored(*found) if found else None


def document(con, snapshot_id: str) -> str | None:
    found = control(con).execute("SELECT data FROM price_snapshots WHERE id = ?", [snapshot_id]).fetchone()
    return found[0] if found else None


def history(con, since: dt.datetime) -> list[Stored]:
    """Every version in use since ``since`` (the one in force then included), oldest first."""
    rows = control(con).execute(f"SELECT {_COLUMNS} FROM price_snapshots ORDER BY fetched_at").fetchall()
    found = [Stored(*row) for row in rows]
    before = [s for s in found if s.fetched_at <= since]
    return before[-1:] + [s for s in found if s.fetched_at > since]


def put(con, snapshot_id: str, source: str, models: int, text: str, now: dt.datetime) -> None:
    """Record a fetch: a new version, or the one already stored checked again at ``now``."""
    control(con).execute(
        "INSERT INTO price_snapshots (id, source, fetched_at, checked_at, models, data) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at, source = excluded.source",
        [snapshot_id, source, now, now, models, text])
