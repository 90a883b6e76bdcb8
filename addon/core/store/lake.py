"""Housekeeping of the shared mode's lake (DuckLake), and erasing deleted values from its files.

DuckLake never deletes a data file by itself: a DELETE writes a delete file beside the Parquet
file that still holds the values, old snapshots keep old files alive, and small inserts are
inlined into the catalog until flushed. So:

- ``maintain``, every ``MAINTENANCE_INTERVAL_S`` from one replica at a time (``Turn``):
  flush inlined rows into Parquet, merge adjacent small files, expire snapshots older than
  ``KEEP_SNAPSHOTS``, delete the files they alone used. Readers running longer than that could
  lose a file under them; report queries are capped far below it.
- ``scrub``, after a GDPR erase or a retention purge: the same, but every file with a deleted row
  is rewritten and every older snapshot expired now, so the deleted values are in no file under
  the data path and in no table of the catalog (measured: tests/test_shared.py, byte checks on
  the data path and on a pg_dump of the catalog).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator

import duckdb

from . import shared, shared_schema

LAKE = "lake"  # the name the shared connection attaches the lake under
MAINTENANCE_INTERVAL_S = 300
KEEP_SNAPSHOTS = dt.timedelta(hours=1)


class Turn:
    """Whose turn it is for the periodic jobs (alerts, retention, lake maintenance): in the shared
    mode, the replica holding a PostgreSQL advisory lock, on a connection of the job's own thread
    (so the writer's connection is never held up by a long job). The embedded mode has one proxy.
    ``lock``: which turn (shared_schema's lock ids)."""

    def __init__(self, lock: int = shared_schema.MAINTENANCE_LOCK) -> None:
        self._db: shared.ControlConnection | None = None
        self._lock = lock

    @contextlib.contextmanager
    def mine(self) -> Iterator[bool]:
        cfg = shared.configured()
        if cfg is None:
            yield True
            return
        try:
            if self._db is None:
                self._db = shared.ControlConnection(cfg)
            took = self._db.execute("SELECT pg_try_advisory_lock(?)", [self._lock]).fetchone()[0]
        except Exception:
            self.close()
            raise
        try:
            yield took
        finally:
            if took and self._db is not None:
                try:
                    self._db.execute("SELECT pg_advisory_unlock(?)", [self._lock])
                except Exception:  # the session is gone, and its lock with it
                    self.close()

    def close(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except Exception:
                pass
            self._db = None


def maintain(con: duckdb.DuckDBPyConnection, now: dt.datetime) -> None:
    older = now - KEEP_SNAPSHOTS
    con.execute(f"CALL ducklake_flush_inlined_data('{LAKE}')")
    con.execute(f"CALL ducklake_merge_adjacent_files('{LAKE}')")
    con.execute(f"CALL ducklake_expire_snapshots('{LAKE}', older_than => ?::TIMESTAMPTZ)", [older])
    con.execute(f"CALL ducklake_cleanup_old_files('{LAKE}', older_than => ?::TIMESTAMPTZ)", [older])


def scrub(con: duckdb.DuckDBPyConnection) -> int:
    """Remove deleted rows from the lake's files and catalog for good; returns the data files left."""
    con.execute(f"CALL ducklake_flush_inlined_data('{LAKE}')")  # inlined rows, deleted ones too, into files
    con.execute(f"CALL ducklake_rewrite_data_files('{LAKE}', delete_threshold => 0)")
    con.execute(f"CALL ducklake_expire_snapshots('{LAKE}', older_than => now())")
    con.execute(f"CALL ducklake_cleanup_old_files('{LAKE}', cleanup_all => true)")
    return data_files(con)


def data_files(con: duckdb.DuckDBPyConnection) -> int:
    """The Parquet files the current snapshot of ``calls`` reads."""
    return len(con.execute(f"SELECT * FROM ducklake_list_files('{LAKE}', 'calls')").fetchall())
