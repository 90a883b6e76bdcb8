"""Rewriting the database into a fresh file, so deleted values are gone from its bytes.

DuckDB keeps deleted values in the file after DELETE, CHECKPOINT, VACUUM and even a table
rewrite in place; only a copy into a new file (``COPY FROM DATABASE``) leaves them behind. The
caller holds the write connection (and so the file lock) throughout: the copy is written beside
the file, synced, and renamed over it while the old file is still locked, so no other process
can write to the old file in between. Processes that open the path afterwards get the new file;
our connection to the old one closes on its (now unlinked) inode and touches nothing else.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import duckdb

from . import encryption
from .connection import attach_options, one


def rewrite(con: duckdb.DuckDBPyConnection, path: Path) -> tuple[int, int]:
    """Replace ``path`` by a fresh copy of everything ``con`` sees; returns (bytes before, after)."""
    before = path.stat().st_size
    _copy_over(con, path, attach_options())
    return before, path.stat().st_size


def backup(con: duckdb.DuckDBPyConnection, target: Path) -> int:
    """Copy everything ``con`` sees into the new file ``target``, encrypted like ours; returns its size.

    A read-only connection is enough, and while it is open no process can write the file: the
    copy is one consistent moment, and a running proxy's writer waits it out with its rows queued,
    as it does for any reader. ``target`` is absolute: with a proxy running, its process (the
    data's owner, store/owner.py) writes the copy, from its own working directory."""
    assert target.is_absolute(), target
    source = one(con.execute("SELECT current_database()"))[0]
    key = encryption.configured_key()
    secret = f", ENCRYPTION_KEY '{key.replace("'", "''")}'" if key else ""
    quoted = str(target).replace("'", "''")
    # A name of its own: attached databases belong to the owner's whole DuckDB instance, and one left
    # attached by a failed copy refused every later backup until the proxy restarted.
    name = f"aispendtrack_backup_{secrets.token_hex(6)}"
    con.execute(f"ATTACH '{quoted}' AS {name} (READ_WRITE{secret})")
    try:
        con.execute(f'COPY FROM DATABASE "{source}" TO {name}')
        con.execute(f"CHECKPOINT {name}")  # everything in the one file, no .wal beside it
    finally:
        _detach(con, name)
    with open(target, "rb") as f:
        os.fsync(f.fileno())
    return target.stat().st_size


def _detach(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """DETACH ``name``, also after a failed statement left the cursor's transaction aborted (which
    refuses a DETACH until it is rolled back)."""
    try:
        con.execute(f"DETACH {name}")
    except duckdb.TransactionException:
        con.execute("ROLLBACK")
        con.execute(f"DETACH {name}")


def encrypt(path: Path, key: str) -> tuple[int, int]:
    """Turn an unencrypted database into an encrypted one, in place. Needs the file to itself."""
    before = path.stat().st_size
    con = duckdb.connect(str(path))
    try:
        encryption.load_secure_crypto(con)
        _copy_over(con, path, encryption.attach_clause(key, read_only=False))
    finally:
        con.close()
    return before, path.stat().st_size


def _copy_over(con: duckdb.DuckDBPyConnection, path: Path, options: str) -> None:
    fresh = path.with_name(path.name + ".rewrite")
    for leftover in (fresh, fresh.with_name(fresh.name + ".wal")):
        leftover.unlink(missing_ok=True)  # from a rewrite that crashed half-way
    source = one(con.execute("SELECT current_database()"))[0]
    con.execute("CHECKPOINT")
    quoted = str(fresh).replace("'", "''")
    con.execute(f"ATTACH '{quoted}' AS aispendtrack_fresh {options}")
    try:
        con.execute(f'COPY FROM DATABASE "{source}" TO aispendtrack_fresh')
    finally:
        con.execute("DETACH aispendtrack_fresh")
    with open(fresh, "rb") as f:
        os.fsync(f.fileno())
    os.replace(fresh, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
