"""Opening the DuckDB file, given that only one process may have it open for writing.

DuckDB takes an exclusive file lock for a read-write connection and a shared one for
read-only connections. While a proxy runs, it owns the file (owner.py): in its process
``writing``/``reading`` hand out cursors on its one open connection. With no owner in the process,
every open (CLI, web) waits for its turn with a short retry instead of failing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import duckdb

from . import encryption, lake, migrated, migrations, owner, remote, shared
from .errors import OwnerAway, StoreBusy, StoreError
from .transaction import transaction

log = logging.getLogger(__name__)

# DuckDB's Python client tries `import pandas` on every execute with parameters (to recognise a
# DataFrame). Without pandas installed, each try searches sys.path again under the import lock:
# measured, a fifth of the owner's time serving the API, its threads queued on that lock. An
# absent module recorded as absent fails at once; a pandas that is installed is left alone.
if importlib.util.find_spec("pandas") is None:
    sys.modules.setdefault("pandas", None)  # type: ignore[arg-type]

# DuckDB refuses a second connection to a file from the same process with another configuration
# (read-only beside read-write). The proxy can serve the web app in-process, so every connection
# in a process takes this lock for its lifetime: at most one is open at a time, whatever its mode.
# (But for the shared mode's reads: cursors side by side on one DuckDB instance, _shared_reader.)
_PROCESS_LOCK = threading.RLock()
_in_use: list = []  # the connections open now, the latest last, for progress()
# Who holds that connection, and since when: named in the message of whoever has to wait for it.
_holders: list[tuple[str, float]] = []
_doing = threading.local()
# Files this process reaches only through their owner's socket, never by opening them: the workers of
# the embedded mode (`proxy --workers N`). With no owner answering, their rows wait (StoreBusy).
_owner_only: set[Path] = set()


class NewerFileFormat(StoreError):
    """The database file was written by a DuckDB newer than the one we run."""


class ReadTooLong(RuntimeError):
    """A read ran past its time limit and was stopped, so that it could not keep writers out."""


def _is_lock_conflict(exc: duckdb.Error) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


def only_through_owner(path: Path) -> None:
    """From now on this process never opens ``path`` itself (see ``_owner_only``)."""
    _owner_only.add(Path(os.path.abspath(path)))


def _refuse_without_owner(path: Path) -> None:
    if _owner_only and Path(os.path.abspath(path)) in _owner_only:
        raise OwnerAway(f"the owner of {path} does not answer on {remote.socket_path(path.parent)} (restarting?); "
                        f"this worker never opens the file itself, so its rows wait until the owner is back.")


def doing(what: str | None) -> None:
    """Name what this thread is about to do with the store (``GET /api/v1/export``), for the message
    of anyone who has to wait for it; None when done."""
    _doing.what = what


def _take_process_lock(what: str, timeout: float) -> None:
    if not _PROCESS_LOCK.acquire(timeout=timeout):
        raise StoreBusy(f"{what} is in use by {_holder()}; waited {timeout:.1f} s.")
    _holders.append((getattr(_doing, "what", None) or f"thread {threading.current_thread().name}",
                     time.monotonic()))


def _release_process_lock() -> None:
    _holders.pop()
    _PROCESS_LOCK.release()


def _holder() -> str:
    """Who has this process's connection now, and for how long (read without the lock: a moment's view)."""
    try:
        what, since = _holders[-1]
    except IndexError:
        return "another part of this process"
    return f"this process's {what}, for {time.monotonic() - since:.1f} s"


def _other_process(exc: duckdb.Error) -> str:
    """The process DuckDB names as holding the file's lock, with its command line when readable."""
    found = re.search(r"\(PID (\d+)\)", str(exc))
    if found is None:
        return "another process"
    pid = found.group(1)
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return f"process {pid}"
    return f"process {pid} ({' '.join(command.split())[:200]})"


def _connect(path: Path, read_only: bool, timeout: float) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + timeout
    _take_process_lock(str(path), timeout)
    try:
        con = _connect_locked(path, read_only, deadline, timeout)
    except BaseException:
        _release_process_lock()
        raise
    _in_use.append(con)
    return con


def _close(con: duckdb.DuckDBPyConnection) -> None:
    try:
        if con in _in_use:
            _in_use.remove(con)
        con.close()
    finally:
        _release_process_lock()


def progress() -> float | None:
    """From any thread: how far (0-100) the statement running on this process's open connection
    is, or None when nothing measurable runs. For progress bars on long work (cli/progress.py)."""
    try:
        found = _in_use[-1].query_progress()
    except Exception:  # none open, or it closed meanwhile
        return None
    return float(found) if found is not None and found >= 0 else None


def _open(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    key = encryption.configured_key()
    try:
        if key is None:
            return duckdb.connect(str(path), read_only=read_only)
        return _open_encrypted(path, read_only, key)
    except (duckdb.CatalogException, duckdb.InvalidInputException) as exc:
        raise encryption.explain(exc, path) from None
    except duckdb.IOException as exc:
        if "newer version of DuckDB" in str(exc):
            raise NewerFileFormat(
                f"{path} was written by a newer DuckDB than this AiSpendTrack uses ({duckdb.__version__}), "
                f"most likely 2.0 by an earlier AiSpendTrack. Convert it once, as docs/architecture.md "
                f"(\"One DuckDB version\") shows: EXPORT DATABASE with DuckDB 2.0, IMPORT DATABASE with "
                f"this one.") from None
        if "not a valid DuckDB database file" in str(exc):
            raise StoreError(f"{path} is not a DuckDB database file (damaged, or another program's): restore it "
                             f"from a backup (docs/operations.md, \"Backup and restore\"), or move it aside to "
                             f"start a new one.") from None
        if _is_lock_conflict(exc):
            raise  # waited for by _connect_locked
        raise _unopenable(path, exc) from None
    except duckdb.Error as exc:  # a damaged file or write-ahead log: checksums, a torn header, ...
        raise _unopenable(path, exc) from None


def _unopenable(path: Path, exc: duckdb.Error) -> StoreError:
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return StoreError(f"cannot open {path}: {type(exc).__name__}: {first}. If the file or its write-ahead log "
                      f"({path.name}.wal) is damaged, restore it from a backup (docs/operations.md, \"Backup and "
                      f"restore\"), or move the .wal aside: the file then opens as it was at its last checkpoint.")


def _open_encrypted(path: Path, read_only: bool, key: str) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    try:
        if not read_only:
            encryption.load_secure_crypto(con)
        quoted = str(path).replace("'", "''")
        con.execute(f"ATTACH '{quoted}' AS store {encryption.attach_clause(key, read_only)}")
        con.execute("USE store")
        return con
    except BaseException:
        con.close()
        raise


def attach_options() -> str:
    """The ATTACH options for another file of ours (a rewrite target): encrypted like the rest."""
    key = encryption.configured_key()
    return encryption.attach_clause(key, read_only=False) if key else ""


def _connect_locked(path: Path, read_only: bool, deadline: float, timeout: float) -> duckdb.DuckDBPyConnection:
    delay = 0.005
    while True:
        try:
            return _open(path, read_only)
        except duckdb.IOException as exc:
            if not _is_lock_conflict(exc) or time.monotonic() >= deadline:
                if _is_lock_conflict(exc):
                    raise StoreBusy(
                        f"{path} is locked by {_other_process(exc)}; waited {timeout:.1f} s. Try again, or "
                        f"stop that process (another aispendtrack command, or a second proxy on the same "
                        f"data directory).") from None
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


@contextlib.contextmanager
def _shared(cfg: shared.SharedConfig, timeout: float) -> Iterator[duckdb.DuckDBPyConnection]:
    """The process's shared-storage connection (kept open), for writing; dropped if the storage went away."""
    _take_process_lock("the shared storage connection", timeout)
    try:
        with shared.held(cfg, writing=True, timeout=timeout) as held, _failing_over(cfg, held, held) as con:
            held.write_wait = timeout  # for its transactions' turn; one writer of the process at a time
            yield con
    finally:
        _release_process_lock()


@contextlib.contextmanager
def _shared_reader(cfg: shared.SharedConfig, timeout: float, long_read: bool) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read of the shared storage, beside the process's other reads and its writes (no process
    lock: the page's parts run at once, and a long report holds back no flush)."""
    deadline = time.monotonic() + timeout  # for all its waits: the storage opened, a slot, the lake attached
    with shared.held(cfg, writing=False, timeout=timeout) as held:
        with (held.reader(max(0.0, deadline - time.monotonic()), long_read) as reader,
              _failing_over(cfg, reader, held) as con):
            yield con


@contextlib.contextmanager
def _failing_over(cfg: shared.SharedConfig, con: shared.SharedConnection,
                  held: shared.SharedConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """``con`` (of the process's connection ``held``) in use, for progress(); where the storage went
    away, ``held`` is dropped and the caller gets one line that says so."""
    _in_use.append(con)
    try:
        yield cast(duckdb.DuckDBPyConnection, con)
    except Exception as exc:
        if not shared.is_connection_failure(exc):
            raise
        shared.drop(held)
        if isinstance(exc, StoreError):
            raise
        # One line that says what happened (a 503 in JSON from the API), not a driver's traceback;
        # and not chained to it: DuckDB's text quotes the catalog's connection string, password and
        # all, which a log line of this error would print.
        raise shared.SharedUnavailable(f"the shared storage at {cfg.where} failed ({shared.without_dsn(exc, cfg)}); "
                                       f"its connection is opened afresh on the next use: try again.") from None
    finally:
        _in_use.remove(con)


def control(con: duckdb.DuckDBPyConnection):
    """Where the control tables (keys, budgets, alerts, ...) are written: the connection itself in
    the embedded mode, PostgreSQL in the shared mode (see shared.py)."""
    return con.control if isinstance(con, shared.SharedConnection) else con


@contextlib.contextmanager
def atomic(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """The control-table changes made inside as one transaction: all of them or, if anything inside
    raises, none (a team renamed without its budgets, or a change without its audit entry, never
    stays). PostgreSQL's in the shared mode, where control tables live there."""
    if isinstance(con, shared.SharedConnection):
        with con.control.pg.transaction():
            yield
        return
    with transaction(con):
        yield


@contextlib.contextmanager
def snapshot(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """The control tables read inside as of one moment. Two reads apart can straddle a change: a team
    renamed in between shows its budget under the old name beside its keys under the new one."""
    if isinstance(con, shared.SharedConnection):
        pg = con.control.pg
        with pg.transaction():  # PostgreSQL's default takes a snapshot per statement
            pg.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield
        return
    with transaction(con):
        yield


def is_shared(con: duckdb.DuckDBPyConnection) -> bool:
    return isinstance(con, shared.SharedConnection)


def open_owned(path: Path, timeout: float = 10.0) -> duckdb.DuckDBPyConnection:
    """The owner's connection (owner.py): read-write, migrated, refused if migrate-to copied the file
    away; kept open by the caller. Taken under the process lock, so no other open is in between."""
    con = _connect(path, read_only=False, timeout=timeout)
    _in_use.remove(con)
    try:
        migrations.apply_pending(con)
        mark = migrated.found(con)
        if mark is not None:
            raise migrated.MigratedAway(mark.refusal(path))
    except BaseException:
        con.close()
        raise
    finally:
        _release_process_lock()
    return con


def is_attached(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the file is attached as ``store`` (encrypted), rather than the connection's own database."""
    # fetchall: a result left open keeps its transaction open, and the owner's connection then
    # holds back every CHECKPOINT (an erase's) of its cursors.
    return con.execute("SELECT current_database()").fetchall() == [("store",)]


@contextlib.contextmanager
def writing(path: Path, timeout: float = 10.0, migrate: bool = True,
            migrated_away: bool = False, alone: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection with the schema up to date; closed (lock released) on exit.

    ``migrate=False`` skips the schema check, for a caller that already migrated this file.
    A file ``migrate-to`` copied into shared storage is refused (migrated.py) unless
    ``migrated_away``: migrate-to's own mark, and the schema of a copy that is only read. The
    check goes with the schema's: the proxy's writer makes it once, at start (migrate-to refuses
    to run while a proxy holds the data directory), not on every flush.
    In the shared mode (shared.py) ``path`` is unused: the connection is the shared storage's.
    Where this process owns the file (owner.py), a cursor on the owner's connection, which the owner
    migrated and checked when it opened it; ``alone``: with no other cursor open meanwhile (an erase
    that renames a fresh copy over the file)."""
    cfg = shared.configured()
    if cfg is not None:
        with _shared(cfg, timeout) as shared_con:
            yield shared_con
        return
    found = owner.serving(path)
    if found is not None:
        with found.cursor(timeout, alone=alone) as cur:
            yield cur
        return
    with remote.session(path.parent, timeout, alone=alone) as through_owner:
        if through_owner is not None:  # a proxy owns the file: its migrations and checks are made
            yield cast(duckdb.DuckDBPyConnection, through_owner)
            return
    _refuse_without_owner(path)
    con = _connect(path, read_only=False, timeout=timeout)
    try:
        if migrate:
            migrations.apply_pending(con)
            mark = None if migrated_away else migrated.found(con)
            if mark is not None:
                raise migrated.MigratedAway(mark.refusal(path))
        yield con
    finally:
        _close(con)


@contextlib.contextmanager
def reading(path: Path, timeout: float = 10.0, time_limit: float | None = None,
            long_read: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection. Creates and migrates the file first if needed (the reader cannot).

    A reader shares the file lock, so while it is open the proxy's writer cannot store rows or
    refresh keys. ``time_limit`` (seconds) interrupts a query still running then (ReadTooLong).
    ``long_read``: one that may run for minutes (an export), of which the shared mode runs only a
    few at once per process (shared.LONG_READS_AT_ONCE)."""
    cfg = shared.configured()
    if cfg is not None:
        with (_shared_reader(cfg, timeout, long_read) as shared_con, lake.reading_files(control(shared_con)),
              time_limited(shared_con, time_limit)):
            yield shared_con
        return
    found = owner.serving(path)
    if found is not None:
        with found.cursor(timeout) as cur, time_limited(cur, time_limit):
            yield cur
        return
    with remote.session(path.parent, timeout, time_limit=time_limit) as through_owner:
        if through_owner is not None:  # the time limit runs in the owner, beside the query
            yield cast(duckdb.DuckDBPyConnection, through_owner)
            return
    _refuse_without_owner(path)
    if not path.exists():
        with writing(path, timeout):
            pass
    con = _connect(path, read_only=True, timeout=timeout)
    is_open = True
    try:
        if not migrations.is_current(con):
            _close(con)
            is_open = False  # closed once: a failed upgrade below says why, not that its lock went twice
            with writing(path, timeout, migrated_away=True):
                pass
            con = _connect(path, read_only=True, timeout=timeout)
            is_open = True
        _say_if_frozen(con, path)
        with time_limited(con, time_limit):
            yield con
    finally:
        if is_open:
            _close(con)


def refuse_if_migrated(path: Path, timeout: float = 10.0) -> None:
    """For a server whose users expect current data (``aispendtrack web``): a file migrate-to copied
    away refuses it as it refuses writes. Nothing to check in the shared mode, or with no file yet."""
    if shared.configured() is not None or owner.serving(path) is not None or not path.exists():
        return
    with remote.session(path.parent, timeout) as through_owner:
        if through_owner is not None:  # a proxy owns the file: it refused a migrated one when it opened it
            return
    con = _connect(path, read_only=True, timeout=timeout)
    try:
        mark = migrated.found(con)
    finally:
        _close(con)
    if mark is not None:
        raise migrated.MigratedAway(mark.refusal(path))


_said_frozen: set[Path] = set()


def _say_if_frozen(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Once per process and file: a read of a file migrate-to copied away shows an old copy. (A CLI
    command configures no logging, so the line goes to its standard error as it is.)"""
    if path in _said_frozen or not (path.parent / migrated.NOTE_FILE).exists():
        return
    mark = migrated.found(con)
    if mark is not None:
        _said_frozen.add(path)
        log.warning("%s", mark.notice(path))


@contextlib.contextmanager
def time_limited(con: duckdb.DuckDBPyConnection, time_limit: float | None) -> Iterator[None]:
    timer = None
    if time_limit is not None:
        timer = threading.Timer(time_limit, con.interrupt)
        timer.daemon = True
        timer.start()
    try:
        yield
    except duckdb.InterruptException:
        raise ReadTooLong(f"the query ran longer than {time_limit:.0f} s and was stopped, so that the "
                          f"proxy can go on writing; ask for less (a shorter period, or a filter).") from None
    finally:
        if timer is not None:
            timer.cancel()


@contextlib.contextmanager
def output_path(con: duckdb.DuckDBPyConnection, path: str) -> Iterator[str]:
    """Where ``con`` can write the file ``path`` (a COPY's target): ``path`` itself, or through the
    owner's socket the descriptor of the file opened here (remote.py)."""
    if isinstance(con, remote.RemoteConnection):
        with con.output_path(path) as target:
            yield target
    else:
        yield path


def one(cursor: duckdb.DuckDBPyConnection) -> tuple:
    """The one row a query always returns (an aggregate, INSERT ... RETURNING, DELETE's count)."""
    row = cursor.fetchone()
    if row is None:
        raise LookupError("the query returned no row")
    return row
