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

A read on another replica may have started on a snapshot whose files ``scrub`` deletes. So every
read holds a shared PostgreSQL advisory lock on the current *generation* of files
(``reading_files``), and ``scrub``, once no current snapshot needs the old files, starts a new
generation and waits for the reads of the old one (all of them started before) to end, at most
``ERASE_WAITS_FOR_READS_S``, before it deletes the files. Reads that start meanwhile take the new
generation, so they never wait for the erase, and the erase never waits for them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterator
from typing import cast

import duckdb

from . import shared, shared_schema
from .shared_schema import LAKE
from .transaction import lake_turn

# Reads stop after 30 s (exports after 120 s): an erase waits that long for those already running,
# then deletes the files anyway (the data subject's values must go), failing a read still running.
ERASE_WAITS_FOR_READS_S = 150
_GENERATION = "lake_read_generation"  # in the config table: the generation new reads take
_WRAP = 2_147_483_647  # generations are the int4 second key of the advisory lock

log = logging.getLogger(__name__)
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


def flush(con: duckdb.DuckDBPyConnection) -> None:
    """Inlined rows (deleted ones too) into Parquet files: read from the catalog, a table's rows cost
    far more (at 100M calls the models' 2,928 daily rows took 0.3 s a report, from a file 0.025 s)."""
    with lake_turn(con):  # each file rewrite in a turn of its own, as other writes (SharedConnection.writing_lake)
        con.execute(f"CALL ducklake_flush_inlined_data('{LAKE}')")


def maintain(con: duckdb.DuckDBPyConnection, now: dt.datetime) -> None:
    older = now - KEEP_SNAPSHOTS
    flush(con)
    with lake_turn(con):
        con.execute(f"CALL ducklake_merge_adjacent_files('{LAKE}')")
    con.execute(f"CALL ducklake_expire_snapshots('{LAKE}', older_than => ?::TIMESTAMPTZ)", [older])
    con.execute(f"CALL ducklake_cleanup_old_files('{LAKE}', older_than => ?::TIMESTAMPTZ)", [older])


def scrub(con: duckdb.DuckDBPyConnection) -> int:
    """Remove deleted rows from the lake's files and catalog for good; returns the data files left."""
    flush(con)
    with lake_turn(con):
        con.execute(f"CALL ducklake_rewrite_data_files('{LAKE}', delete_threshold => 0)")
    con.execute(f"CALL ducklake_expire_snapshots('{LAKE}', older_than => now())")
    with _reads_of_old_files_done(cast(shared.SharedConnection, con).control):
        con.execute(f"CALL ducklake_cleanup_old_files('{LAKE}', cleanup_all => true)")
    return data_files(con)


@contextlib.contextmanager
def reading_files(control: shared.ControlConnection) -> Iterator[None]:
    """Around a read of the lake: the files it may use stay on disk until it ends (see above)."""
    (generation, _) = control.execute(
        "SELECT g, pg_advisory_lock_shared(?, g) FROM "
        "(SELECT coalesce(max(value::int), 0) AS g FROM config WHERE name = ?) AS current_generation",
        [shared_schema.LAKE_READS_LOCK, _GENERATION]).fetchone()
    try:
        yield
    finally:
        try:
            control.execute("SELECT pg_advisory_unlock_shared(?, ?)", [shared_schema.LAKE_READS_LOCK, generation])
        except Exception:  # the session is gone, and its lock with it
            pass


@contextlib.contextmanager
def _reads_of_old_files_done(control: shared.ControlConnection) -> Iterator[None]:
    """A new generation for reads from now on; then wait (bounded) until no read of the old one runs."""
    import psycopg

    (new,) = control.execute(
        "INSERT INTO config (name, value, updated_at) VALUES (?, '1', now()) ON CONFLICT (name) DO UPDATE "
        "SET value = mod(config.value::bigint + 1, ?)::varchar, updated_at = now() RETURNING value::int",
        [_GENERATION, _WRAP]).fetchone()
    old = (new - 1) % _WRAP
    control.execute(f"SET lock_timeout = {ERASE_WAITS_FOR_READS_S * 1000}")
    try:
        control.execute("SELECT pg_advisory_lock(?, ?)", [shared_schema.LAKE_READS_LOCK, old])
        waited = True
    except psycopg.errors.LockNotAvailable:
        log.warning("a read of the lake on another replica ran past %d s; the erased values' files are "
                    "deleted anyway, and that read fails", ERASE_WAITS_FOR_READS_S)
        waited = False
    finally:
        control.execute("RESET lock_timeout")
    try:
        yield
    finally:
        if waited:
            control.execute("SELECT pg_advisory_unlock(?, ?)", [shared_schema.LAKE_READS_LOCK, old])


def data_files(con: duckdb.DuckDBPyConnection) -> int:
    """The Parquet files the current snapshot of ``calls`` reads."""
    return len(con.execute(f"SELECT * FROM ducklake_list_files('{LAKE}', 'calls')").fetchall())
