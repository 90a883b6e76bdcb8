"""The mark ``migrate-to`` leaves in the embedded database it copied into shared storage.

From then on the shared storage holds the deployment's data, and anything written here would go
where no proxy or report looks: a key that never works, a budget nobody enforces, calls nobody
sees. So every read-write open of a marked file is refused (``connection.writing``: the CLI's
write commands, the proxy's start) with a message that names where the data went and how to
point at it. Reads still work, each process saying once that they show the copy as it was when it
was migrated: that copy is how one checks a migration, or starts over from it.

The mark is a row of the file's own ``config`` table, so it travels with the file (a backup, a
copy moved elsewhere), and names the catalog without its password. A file beside it, ``NOTE_FILE``,
says the same to whoever lists the directory, and lets a read skip the query when it is absent:
under load one more query per read cost readers 10-20 ms each, and the proxy's writer waits for them.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import duckdb

from ..redact import hide_passwords
from .errors import StoreError
from .shared import ENV_CATALOG

SETTING = "migrated_to"
NOTE_FILE = "MIGRATED.txt"


class MigratedAway(StoreError):
    """A write to an embedded database that was migrated to shared storage."""


@dataclass(frozen=True)
class Mark:
    catalog: str  # the URL as given to migrate-to, its password replaced by ***
    at: dt.datetime

    def _point_at_it(self) -> str:
        password = " (its password in place of ***)" if "***" in self.catalog else ""
        return f"{ENV_CATALOG}={self.catalog}{password}, or --catalog"

    def refusal(self, path: Path) -> str:
        return (f"{path} was migrated to the shared storage at {self.catalog} on {self.at:%Y-%m-%d %H:%M} UTC "
                f"(`aispendtrack migrate-to`) and is no longer written: a change made here would reach no proxy. "
                f"Point this command and every proxy at the shared storage with {self._point_at_it()}.")

    def notice(self, path: Path) -> str:
        return (f"Note: {path} was migrated to the shared storage at {self.catalog} on {self.at:%Y-%m-%d %H:%M} "
                f"UTC; this shows its copy as of then. For the current data set {self._point_at_it()}.")


def mark(con: duckdb.DuckDBPyConnection, path: Path, catalog: str, now: dt.datetime) -> None:
    """Record in the embedded file ``path`` (open as ``con``) that it was copied into ``catalog``."""
    value = json.dumps({"catalog": hide_passwords(catalog), "at": now.isoformat()})
    con.execute("INSERT INTO config (name, value, updated_at) VALUES (?, ?, ?) ON CONFLICT (name) "
                "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at", [SETTING, value, now])
    found = Mark(hide_passwords(catalog), now)
    (path.parent / NOTE_FILE).write_text(found.refusal(path) + "\n", encoding="utf-8")


def found(con: duckdb.DuckDBPyConnection) -> Mark | None:
    """The mark of an embedded file, or None."""
    try:
        row = con.execute("SELECT value FROM config WHERE name = ?", [SETTING]).fetchone()
    except duckdb.CatalogException:  # a file no version with a config table has written yet
        return None
    if row is None:
        return None
    value = json.loads(row[0])
    return Mark(value["catalog"], dt.datetime.fromisoformat(value["at"]))
