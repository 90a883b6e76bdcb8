"""Shared mode: several proxies (and every CLI and web process) on one storage.

Switched on by ``AISPENDTRACK_CATALOG`` (a PostgreSQL URL); ``AISPENDTRACK_DATA_PATH`` (a directory
or ``s3://bucket/prefix``) says where the lake's Parquet files go when the catalog is first made.

- **Rows** (``calls``, ``rollups``) are a DuckLake lakehouse: its catalog in PostgreSQL, its
  data as Parquet under the data path. Small writes are inlined into the catalog, so one-second
  flushes do not make a file each; ``maintenance.py`` folds them into files on a schedule.
- **Control state** (keys, admin tokens, budgets, alerts, web sign-ins, settings, limit counters)
  is plain PostgreSQL tables in the schema ``aispendtrack``: small, and changed per call.

A ``SharedConnection`` is a DuckDB connection with the lake attached as ``lake`` (the default
catalog) and the PostgreSQL schema attached as ``ctl`` behind it on the search path, so the
report and export SQL of the embedded mode runs unchanged, joins included. Writes to control
tables go through ``control(con)``: psycopg on the same database, because DuckDB's PostgreSQL
scanner cannot return rows from an INSERT or UPDATE, and one DuckDB transaction cannot write to
two attached databases.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import select
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import duckdb

from ..redact import first_line, hide_passwords
from . import extensions, shared_schema
from .errors import StoreBusy, StoreError

ENV_CATALOG = "AISPENDTRACK_CATALOG"
ENV_DATA_PATH = "AISPENDTRACK_DATA_PATH"
CONTROL_SCHEMA = "aispendtrack"
# Rows inlined into the catalog per insert at most; bigger batches go straight to Parquet.
INLINE_ROWS = 10_000
# A process's reads of the shared storage at once (the web server runs 8 threads), each with a
# PostgreSQL session of its own, of which this many are kept idle between reads, for so long at
# most (a session a firewall silently cut would hang its next read, as DuckDB's own pool avoids).
READS_AT_ONCE = 4
# Of those, long reads (an export: up to 2 minutes) at once at most, so the others keep slots for
# the page's and the API's short reads rather than wait behind them and time out.
LONG_READS_AT_ONCE = 2
IDLE_READ_SESSIONS = 2
IDLE_READ_SESSION_S = 60
CONNECT_TIMEOUT_S = 3
# A session whose other end stops answering (a cut network, a frozen VM) is given up after this
# long, where the OS's retransmissions held our end ~15 minutes and the server's keepalives held
# its end ~2 hours, with what it held (a turn at writing the lake, a DuckLake commit's row locks).
# Both ends: libpq's tcp_user_timeout (data sent and not acknowledged) and keepalives (a statement
# waiting for its answer, an idle session), and the server's same settings for its end. A live
# peer's kernel answers both while it works; a peer that stops reading for this long (blocked
# mid-statement with a full window) is cut too, hence not less.
DEAD_SESSION_S = 30
_KEEPALIVE_S = 10


class SharedUnavailable(StoreError):
    """The catalog (PostgreSQL) or the data path cannot be reached or used."""


@dataclass(frozen=True)
class SharedConfig:
    catalog: str          # postgresql://user@host:5432/db
    data_path: str | None

    @property
    def params(self) -> dict[str, str]:
        """The catalog's connection parameters as libpq reads them (a password may hold ``?`` or
        ``#``, which a URL parser takes for the query or the fragment)."""
        return dict(_parsed(self.catalog))

    @property
    def where(self) -> str:
        """The catalog without its user or password, for messages and logs."""
        found = self.params
        host = found.get("host") or found.get("hostaddr") or "localhost"
        dbname = found.get("dbname")
        return f"{host}:{found.get('port') or 5432}{'/' + dbname if dbname else ''}"


@functools.lru_cache(maxsize=8)
def _parsed(catalog: str) -> tuple[tuple[str, str], ...]:
    """libpq's parse, once per URL: configured() is asked on every read and write (50 us a parse)."""
    from psycopg.conninfo import conninfo_to_dict

    return tuple((name, str(value)) for name, value in conninfo_to_dict(catalog).items())


def configured() -> SharedConfig | None:
    catalog = os.environ.get(ENV_CATALOG)
    return config(catalog, os.environ.get(ENV_DATA_PATH) or None) if catalog else None


def config(catalog: str, data_path: str | None) -> SharedConfig:
    """The shared storage at ``catalog`` (SharedUnavailable, saying why, if it is no PostgreSQL URL)."""
    if not catalog.startswith(("postgresql://", "postgres://")):
        raise SharedUnavailable(f"{ENV_CATALOG} must be a PostgreSQL URL (postgresql://user@host:5432/db), "
                                f"not {hide_passwords(catalog)!r}.")
    try:
        _parsed(catalog)
    except Exception as exc:  # psycopg's ProgrammingError: libpq could not parse it
        # libpq quotes the part it could not read, which may be the password.
        secret = catalog.split("://", 1)[1].rpartition("@")[0]
        reason = re.sub(r'"([^"]*)"', lambda m: '"***"' if m.group(1) in secret else m.group(0), first_line(exc))
        raise SharedUnavailable(f"{ENV_CATALOG} is not a PostgreSQL URL libpq can read: {reason}.") from None
    return SharedConfig(catalog, data_path)


def dsn(cfg: SharedConfig, options: str = "") -> str:
    """The catalog as libpq's keyword/value string, with CONNECT_TIMEOUT_S and DEAD_SESSION_S in
    each of the settings the URL does not name itself: a session to a host that does not answer
    gives up then (DuckDB's too, whose sessions otherwise wait as long as the OS lets them), and the
    server ends its side of one whose client vanished. ``options``: more of the server's settings
    (``-c name=value``), after the URL's own."""
    from psycopg.conninfo import make_conninfo

    dead = {"tcp_user_timeout": DEAD_SESSION_S * 1000, "keepalives_idle": _KEEPALIVE_S,
            "keepalives_interval": _KEEPALIVE_S, "keepalives_count": DEAD_SESSION_S // _KEEPALIVE_S - 1}
    ours = {"connect_timeout": CONNECT_TIMEOUT_S, **dead}
    given = cfg.params.get("options", "")
    named = given.lower().replace("-", "_")  # as the server reads names: --tcp-user-timeout=0 too
    # The same bounds for the server's end, by its names: tcp_user_timeout, tcp_keepalives_idle...
    server = " ".join(f"-c {name}={value}" for name, value in
                      ((n if n.startswith("tcp_") else f"tcp_{n}", v) for n, v in dead.items()) if name not in named)
    return make_conninfo(cfg.catalog, **{k: v for k, v in ours.items() if k not in cfg.params},
                         options=" ".join(part for part in (given, server, options) if part))


def without_dsn(exc: BaseException, cfg: SharedConfig) -> str:
    """An error's first line with "the catalog" for the connection string DuckDB quotes in it (twice
    in a failed attach of the lake, where the quotes left no room for the reason), passwords hidden
    in what is left."""
    quoted = dsn(cfg)
    text = str(exc).replace(f'"postgres:{quoted}"', "the catalog").replace(f'"{quoted}"', "the catalog")
    return first_line(RuntimeError(text)) if text.strip() else type(exc).__name__


class ControlConnection:
    """psycopg on the control schema, with DuckDB's ``?`` placeholders: the control queries in
    ``keys.py``, ``budgets.py``... are written once for both modes. (So they use no ``%``.)"""

    def __init__(self, cfg: SharedConfig) -> None:
        import psycopg

        try:
            self.pg = psycopg.connect(dsn(cfg, f"-c search_path={CONTROL_SCHEMA}"), autocommit=True)
        except psycopg.Error as exc:
            raise SharedUnavailable(f"cannot reach the catalog at {cfg.where}: {first_line(exc)}") from None

    def execute(self, sql: str, params: list | tuple = ()):
        cursor = self.pg.cursor()
        cursor.execute(sql.replace("?", "%s"), params)  # our own SQL: no "?" or "%" in its text
        return cursor

    def close(self) -> None:
        self.pg.close()

    def broken(self) -> bool:
        return ended_by_server(self.pg)


def ended_by_server(pg) -> bool:
    """Whether the server closed this idle psycopg session (a restart, a terminated backend), seen
    without a round trip: an idle autocommit session that listens for nothing is sent nothing else."""
    if pg.closed:
        return True
    # poll, not select: select refuses a descriptor past 1023, which a proxy serving hundreds of
    # connections gives its sessions, and every healthy one was then taken for ended.
    waiting = select.poll()
    try:
        waiting.register(pg.fileno(), select.POLLIN)
        return bool(waiting.poll(0))
    except (OSError, ValueError):
        return True


class SharedConnection:
    """DuckDB with the lake and the control schema attached, plus ``control`` for control writes.
    Anything not defined here is the DuckDB connection's (execute, fetchall...).

    DuckDB is attached on first use: loading its two extensions (each file's signature checked)
    and attaching cost 0.4-0.6 s, which a command that only touches control tables (``keys
    set-plan``, ``budgets set``) does not need."""

    def __init__(self, cfg: SharedConfig) -> None:
        self.cfg = cfg
        self._duck: duckdb.DuckDBPyConnection | None = None
        self.control = ControlConnection(cfg)
        self._attaching = threading.Lock()  # held while DuckDB is attached: others that need it wait
        # Reads (reader()) beside the process's one writer: their slots and idle control sessions;
        # threads using this connection now (held()), and whether a close waits for the last of them.
        self._reads = threading.BoundedSemaphore(READS_AT_ONCE)
        self._long_reads = threading.BoundedSemaphore(LONG_READS_AT_ONCE)
        self._lock = threading.Lock()
        self._idle_controls: list[tuple[ControlConnection, float]] = []  # (session, since)
        self._users = 0
        self._closing = False
        self.write_wait = 10.0  # seconds a transaction waits for its turn (writing_lake): the writer's own
        try:
            shared_schema.ensure_control(self.control)
        except BaseException:
            self.control.close()
            raise

    def attach(self, control: ControlConnection | None = None, timeout: float = -1) -> duckdb.DuckDBPyConnection:
        """The DuckDB connection, attached now if it is not yet (SharedUnavailable if it cannot be);
        a reader attaches through its own ``control`` session, never the writer's, and waits for
        another thread's attach ``timeout`` seconds at most (StoreBusy)."""
        if not self._attaching.acquire(timeout=timeout):
            raise StoreBusy(f"another thread of this process is opening the lake; waited {timeout:.1f} s.")
        try:
            if self._duck is None:
                self._duck = _attach(self.cfg, control or self.control)
            return self._duck
        finally:
            self._attaching.release()

    @property
    def duck(self) -> duckdb.DuckDBPyConnection:
        return self.attach()

    def __getattr__(self, name: str):
        return getattr(self.duck, name)

    def execute(self, sql: str, params: object = None):
        return self.duck.execute(sql, params)

    @contextlib.contextmanager
    def writing_lake(self, appends: bool) -> Iterator[None]:
        """Around each transaction that writes the lake (transaction.py), for write_wait seconds at
        most (StoreBusy). DuckLake checks conflicts per table: a transaction that deleted or updated
        rows fails at its commit if another committed rows to the table after it began, so a
        reprice of 20,000 calls (2 s) failed every time beside one replica flushing every second;
        appends alone are merged. So every replica's appends hold this catalog-wide lock shared, any
        other write (a reprice, an erase, a purge, a merge of rollup rows) alone: it waits for the
        flushes under way, and those that come meanwhile wait for it (PostgreSQL queues them)."""
        import psycopg

        self.attach()  # not under the lock: a command's first write loads the extensions and attaches (0.5 s)
        mode = "_shared" if appends else ""
        self.control.execute(f"SET lock_timeout = {max(1, round(self.write_wait * 1000))}")
        try:
            self.control.execute(f"SELECT pg_advisory_lock{mode}(?)", [shared_schema.LAKE_WRITES_LOCK])
        except psycopg.errors.LockNotAvailable:
            raise StoreBusy(f"another change to the stored rows is under way (a reprice, an erase or a purge, on "
                            f"this replica or another); waited {self.write_wait:.1f} s for it.") from None
        finally:
            self.control.execute("RESET lock_timeout")
        try:
            yield
        finally:
            try:
                self.control.execute(f"SELECT pg_advisory_unlock{mode}(?)", [shared_schema.LAKE_WRITES_LOCK])
            except Exception:  # the session is gone, and its lock with it
                pass

    # Called from other threads (a read's time limit, a progress bar): they never attach.
    def interrupt(self) -> None:
        if self._duck is not None:
            self._duck.interrupt()

    def query_progress(self) -> float:
        return self._duck.query_progress() if self._duck is not None else -1

    @contextlib.contextmanager
    def reader(self, timeout: float, long_read: bool = False) -> Iterator[SharedConnection]:
        """This storage for one read, beside other threads' reads and the writer's flushes: a cursor
        of its own on the DuckDB instance (the lake attached once for all, on first use) and a
        control session of its own, so a read never runs inside a writer's PostgreSQL transaction,
        nor an erase's lock timeout inside a read. At most READS_AT_ONCE at a time (each holds
        PostgreSQL sessions), LONG_READS_AT_ONCE of them ``long_read``; a few control sessions are
        kept for the next reads."""
        deadline = time.monotonic() + timeout
        with contextlib.ExitStack() as slots:
            if long_read:
                if not self._long_reads.acquire(timeout=timeout):
                    raise StoreBusy(f"{LONG_READS_AT_ONCE} exports of the shared storage are running in this "
                                    f"process; waited {timeout:.1f} s for one to end.")
                slots.callback(self._long_reads.release)
            if not self._reads.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise StoreBusy(f"{READS_AT_ONCE} reads of the shared storage are running in this process; "
                                f"waited {timeout:.1f} s for one to end.")
            slots.callback(self._reads.release)
            control = self._idle_control()
            found = _Reader(self, control, max(0.0, deadline - time.monotonic()))
            try:
                yield found
            finally:
                try:
                    if found._duck is not None:
                        found._duck.close()
                finally:
                    with self._lock:
                        kept = not self._closing and len(self._idle_controls) < IDLE_READ_SESSIONS
                        if kept:
                            self._idle_controls.append((control, time.monotonic()))
                    if not kept:
                        control.close()

    def _idle_control(self) -> ControlConnection:
        """A control session for a read: a recently idle one, or a new one."""
        with self._lock:
            control, since = self._idle_controls.pop() if self._idle_controls else (None, 0.0)
        if control is not None and (time.monotonic() - since > IDLE_READ_SESSION_S or control.broken()):
            control.close()
            control = None
        return control or ControlConnection(self.cfg)

    def _use(self) -> None:
        with self._lock:
            self._users += 1

    def _release(self) -> None:
        with self._lock:
            self._users -= 1
            closing = self._closing and self._users == 0
        if closing:
            try:
                self._close_now()
            except Exception:  # dropped as broken: closing it may fail too, and the read itself went well
                pass

    def close(self) -> None:
        """Closed now, or (dropped while other threads use it) once the last of them is done: a DuckDB
        connection closed under a running cursor is not safe."""
        with self._lock:
            self._closing = True
            if self._users:
                return
        self._close_now()

    def _close_now(self) -> None:
        try:
            if self._duck is not None:
                self._duck.close()
        finally:
            with self._lock:
                idle, self._idle_controls = self._idle_controls, []
            for control in [self.control, *(c for c, _ in idle)]:
                control.close()


class _Reader(SharedConnection):
    """A SharedConnection for one read (SharedConnection.reader), which closes it."""

    def __init__(self, parent: SharedConnection, control: ControlConnection, timeout: float) -> None:
        self.cfg = parent.cfg
        self.control = control
        self._parent = parent
        self._timeout = timeout
        self._duck = None

    def attach(self, control: ControlConnection | None = None, timeout: float = -1) -> duckdb.DuckDBPyConnection:
        if self._duck is None:
            duck = self._parent.attach(self.control, self._timeout).cursor()
            try:
                _use_lake(duck)
            except BaseException:
                duck.close()
                raise
            self._duck = duck
        return self._duck

    def close(self) -> None:
        pass


def _attach(cfg: SharedConfig, control: ControlConnection) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    try:
        extensions.load(con, "postgres_scanner", "Shared storage (AISPENDTRACK_CATALOG)")
        extensions.load(con, "ducklake", "Shared storage (AISPENDTRACK_CATALOG)")
        data_path = shared_schema.data_path(control, cfg.data_path)
        if data_path.startswith("s3://"):
            extensions.load(con, "httpfs", "A data path on object storage")
        # With libpq's connect timeout and keepalives (dsn()), as the control sessions: DuckDB opens
        # sessions of its own to the catalog (here and whenever its pool needs one), and opening one
        # to a host that drops packets would otherwise wait for the TCP timeout (about 2 minutes),
        # to one that accepts and never answers (a stopped server) for ever, and one open when the
        # network is cut ~15 minutes.
        url = dsn(cfg).replace("'", "''")
        options = f"DATA_PATH '{data_path.replace(chr(39), chr(39) * 2)}', DATA_INLINING_ROW_LIMIT {INLINE_ROWS}"
        try:
            with shared_schema.creating_lake(control):
                con.execute(f"ATTACH 'ducklake:postgres:{url}' AS {shared_schema.LAKE} ({options})")
            con.execute(f"ATTACH '{url}' AS ctl (TYPE postgres, SCHEMA '{CONTROL_SCHEMA}')")
        except duckdb.Error as exc:
            raise SharedUnavailable(f"cannot open the lake at {cfg.where} with data in {data_path}: "
                                    f"{without_dsn(exc, cfg)}") from None
        _use_lake(con)
        # The Parquet footers read once per file, not at every scan: DuckLake never rewrites a data
        # file in place (new files get new names), so a cached footer cannot go stale. A total over
        # a range cutting a day scans three tiers' files: 127 -> 112 ms at 10M calls (docs/benchmarks.md).
        con.execute("SET parquet_metadata_cache = true")
        shared_schema.ensure_lake(con, control)
        return con
    except BaseException:
        con.close()
        raise


def _use_lake(con: duckdb.DuckDBPyConnection) -> None:
    """Names resolve in the lake, then the control schema (a setting of each DuckDB connection)."""
    con.execute(f"USE {shared_schema.LAKE}")
    con.execute(f"SET search_path = '{shared_schema.LAKE}.main,ctl.{CONTROL_SCHEMA}'")


# One connection per process, kept open: attaching costs ~50-200 ms, far too much per flush.
# Its writes go under connection.py's process lock, like the embedded file's; reads through
# reader(), side by side.
_cached: SharedConnection | None = None
_cached_lock = threading.Lock()


@contextlib.contextmanager
def held(cfg: SharedConfig, writing: bool, timeout: float) -> Iterator[SharedConnection]:
    """The process's connection, not closed while in use here (a drop() meanwhile closes it after);
    StoreBusy if another thread has been opening it for ``timeout`` seconds. ``writing``: for its
    control session, which a writer uses, so one PostgreSQL closed while we were idle is replaced
    first and the first request after a restart is answered. (DuckDB's own sessions to the
    catalog reconnect by themselves; a read's control session is its own.)"""
    global _cached
    if not _cached_lock.acquire(timeout=timeout):
        raise StoreBusy(f"another thread of this process is opening the shared storage; waited {timeout:.1f} s.")
    try:
        if _cached is None or _cached.cfg != cfg or (writing and _cached.control.broken()):
            _drop()
            _cached = SharedConnection(cfg)
        con = _cached
        con._use()
    finally:
        _cached_lock.release()
    try:
        yield con
    finally:
        con._release()


def drop(failed: SharedConnection | None = None) -> None:
    """Forget the cached connection (after a failure): the next use connects afresh. ``failed``:
    only if it is still that one (another thread may have replaced it already)."""
    with _cached_lock:
        if failed is None or _cached is failed:
            _drop()


def _drop() -> None:
    global _cached
    if _cached is not None:
        try:
            _cached.close()
        except Exception:  # already broken: that is why it is dropped
            pass
        _cached = None


def is_connection_failure(exc: BaseException) -> bool:
    """Whether ``exc`` means the storage went away (reconnect), not that a statement was wrong."""
    try:
        import psycopg
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            return True
    except ImportError:
        pass
    if isinstance(exc, (duckdb.IOException, duckdb.ConnectionException, duckdb.FatalException,
                        duckdb.TransactionException)):
        return True
    text = str(exc).lower()
    return "connection" in text or "server closed" in text or "could not connect" in text
