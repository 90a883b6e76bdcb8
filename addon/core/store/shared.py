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

import os
import select
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

import duckdb

from ..redact import first_line, hide_passwords
from . import extensions, shared_schema
from .errors import StoreError

ENV_CATALOG = "AISPENDTRACK_CATALOG"
ENV_DATA_PATH = "AISPENDTRACK_DATA_PATH"
CONTROL_SCHEMA = "aispendtrack"
# Rows inlined into the catalog per insert at most; bigger batches go straight to Parquet.
INLINE_ROWS = 10_000
CONNECT_TIMEOUT_S = 3


class SharedUnavailable(StoreError):
    """The catalog (PostgreSQL) or the data path cannot be reached or used."""


@dataclass(frozen=True)
class SharedConfig:
    catalog: str          # postgresql://user@host:5432/db
    data_path: str | None

    @property
    def where(self) -> str:
        """The catalog without its password, for messages and logs."""
        parts = urlsplit(self.catalog)
        host = parts.hostname or "localhost"
        return f"{host}:{parts.port or 5432}{parts.path}"


def configured() -> SharedConfig | None:
    catalog = os.environ.get(ENV_CATALOG)
    if not catalog:
        return None
    if not catalog.startswith(("postgresql://", "postgres://")):
        raise SharedUnavailable(f"{ENV_CATALOG} must be a PostgreSQL URL (postgresql://user@host:5432/db), "
                                f"not {hide_passwords(catalog)!r}.")
    return SharedConfig(catalog, os.environ.get(ENV_DATA_PATH) or None)


def _pg_url(cfg: SharedConfig) -> str:
    separator = "&" if "?" in cfg.catalog else "?"
    return f"{cfg.catalog}{separator}connect_timeout={CONNECT_TIMEOUT_S}"


class ControlConnection:
    """psycopg on the control schema, with DuckDB's ``?`` placeholders: the control queries in
    ``keys.py``, ``budgets.py``... are written once for both modes. (So they use no ``%``.)"""

    def __init__(self, cfg: SharedConfig) -> None:
        import psycopg

        try:
            self.pg = psycopg.connect(_pg_url(cfg), autocommit=True, options=f"-c search_path={CONTROL_SCHEMA}")
        except psycopg.Error as exc:
            raise SharedUnavailable(f"cannot reach the catalog at {cfg.where}: {first_line(exc)}") from None

    def execute(self, sql: str, params: list | tuple = ()):
        cursor = self.pg.cursor()
        cursor.execute(sql.replace("?", "%s"), params)  # our own SQL: no "?" or "%" in its text
        return cursor

    def close(self) -> None:
        self.pg.close()

    def broken(self) -> bool:
        """Whether the server closed this idle session (a restart, a terminated backend), seen without
        a round trip: an idle autocommit session that listens for nothing is sent nothing else."""
        if self.pg.closed:
            return True
        try:
            readable, _, _ = select.select([self.pg.fileno()], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)


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
        try:
            shared_schema.ensure_control(self.control)
        except BaseException:
            self.control.close()
            raise

    def attach(self) -> duckdb.DuckDBPyConnection:
        """The DuckDB connection, attached now if it is not yet (SharedUnavailable if it cannot be)."""
        if self._duck is None:
            self._duck = _attach(self.cfg, self.control)
        return self._duck

    duck = property(attach)

    def __getattr__(self, name: str):
        return getattr(self.duck, name)

    def execute(self, sql: str, params: object = None):
        return self.duck.execute(sql, params)

    # Called from other threads (a read's time limit, a progress bar): they never attach.
    def interrupt(self) -> None:
        if self._duck is not None:
            self._duck.interrupt()

    def query_progress(self) -> float:
        return self._duck.query_progress() if self._duck is not None else -1

    def close(self) -> None:
        try:
            if self._duck is not None:
                self._duck.close()
        finally:
            self.control.close()


def _attach(cfg: SharedConfig, control: ControlConnection) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    try:
        extensions.load(con, "postgres_scanner", "Shared storage (AISPENDTRACK_CATALOG)")
        extensions.load(con, "ducklake", "Shared storage (AISPENDTRACK_CATALOG)")
        data_path = shared_schema.data_path(control, cfg.data_path)
        if data_path.startswith("s3://"):
            extensions.load(con, "httpfs", "A data path on object storage")
        url = cfg.catalog.replace("'", "''")
        options = f"DATA_PATH '{data_path.replace(chr(39), chr(39) * 2)}', DATA_INLINING_ROW_LIMIT {INLINE_ROWS}"
        try:
            with shared_schema.creating_lake(control):
                con.execute(f"ATTACH 'ducklake:postgres:{url}' AS {shared_schema.LAKE} ({options})")
            con.execute(f"ATTACH '{url}' AS ctl (TYPE postgres, SCHEMA '{CONTROL_SCHEMA}')")
        except duckdb.Error as exc:
            raise SharedUnavailable(f"cannot open the lake at {cfg.where} with data in {data_path}: "
                                    f"{first_line(exc)}") from None
        con.execute(f"USE {shared_schema.LAKE}")
        con.execute(f"SET search_path = '{shared_schema.LAKE}.main,ctl.{CONTROL_SCHEMA}'")
        shared_schema.ensure_lake(con, control)
        return con
    except BaseException:
        con.close()
        raise


# One connection per process, kept open: attaching costs ~50-200 ms, far too much per flush.
# Used under connection.py's process lock, like the embedded file.
_cached: SharedConnection | None = None
_cached_lock = threading.Lock()


def connection(cfg: SharedConfig) -> SharedConnection:
    global _cached
    with _cached_lock:
        # A session PostgreSQL closed while we were idle is replaced before use, so the first request
        # after a restart is answered. (DuckDB's own sessions to the catalog reconnect by themselves.)
        if _cached is None or _cached.cfg != cfg or _cached.control.broken():
            drop()
            _cached = SharedConnection(cfg)
        return _cached


def drop() -> None:
    """Forget the cached connection (after a failure): the next use connects afresh."""
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
