"""The owner of the embedded data: one process opens the DuckDB file once and keeps it open.

Opening and closing the file costs ~20-75 ms, so a proxy that opened it for every flush, and a
web app that opened it for every request, spent most of their time doing that (an API request
opened it twice: ~15 requests/s). The proxy (or plain ``mitmdump -s addon/aispendtrack.py``,
which is then its own owner) starts an ``Owner`` for its data directory; from then on
``connection.writing``/``reading`` in that process hand out a cursor on the owner's connection:
its own transaction, no open, and readers no longer keep the writer out (DuckDB's MVCC).

Other processes (the CLI, a standalone ``aispendtrack web``) reach the owner through its socket
(``owner_socket.py``) while it runs, and open the file themselves when it does not.

One operation needs the file to itself: a GDPR erase rewrites the file and renames the copy over
it (compact.py). It asks for a cursor ``alone``: that waits for the other cursors to finish and
keeps new ones out, and when the file was replaced the owner reopens it before anyone else goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb

from . import remote
from .errors import StoreBusy, StoreError

log = logging.getLogger(__name__)
_owners: dict[Path, Owner] = {}
_registry_lock = threading.Lock()


class OwnerBusy(StoreBusy):
    """An operation that needs the file alone waited too long for the others to finish (or they for it)."""


class Owner:
    """The one open connection to ``path``, lent out as cursors (see the module's docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._con: duckdb.DuckDBPyConnection | None = None
        self._inode = 0
        self._encrypted = False
        self._gate = threading.Condition()
        self._sharing = 0  # cursors lent now
        self._alone = False  # an ``alone`` cursor is lent, or waits for the others to end
        self._invalidated = False  # DuckDB gave up on the connection: reopened once no cursor is lent
        self._said_at = -1e9  # the last time a failed reopen was logged
        self.socket: remote.OwnerSocket | None = None

    def open(self) -> None:
        """Open the file read-write (created and migrated if needed), as ``connection.writing`` would."""
        from . import connection  # the owner is one way connection.py hands out connections
        self._con = connection.open_owned(self.path)
        self._encrypted = connection.is_attached(self._con)
        self._inode = os.stat(self.path).st_ino

    def close(self, patience: float = 10.0) -> None:
        """Close once the cursors lent now are done, or after ``patience`` seconds (a stop must end)."""
        with self._gate:
            self._gate.wait_for(lambda: not self._alone, timeout=patience)
            self._alone = True
            self._gate.wait_for(lambda: self._sharing == 0, timeout=patience)
            if self._con is not None:
                self._con.close()  # checkpoints: the file is whole without its WAL
                self._con = None

    @contextlib.contextmanager
    def cursor(self, timeout: float, alone: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor of its own (a transaction of its own); ``alone``: with no other cursor open meanwhile."""
        self._enter(timeout, alone)
        try:
            if self._con is None:
                raise StoreError(f"{self.path} is closed: the proxy that owns it is stopping."
                                 if not self._invalidated else
                                 f"{self.path} could not be opened again after a write failed (a full disk?); "
                                 f"it is tried again at the next write.")
            cur = self._con.cursor()
            try:
                if self._encrypted:  # a cursor starts in the default (in-memory) database
                    cur.execute("USE store")
                yield cur
            except duckdb.Error as exc:
                if _invalidates(exc):
                    self._invalidated = True
                raise
            finally:
                cur.close()
        finally:
            self._leave(alone)

    def _enter(self, timeout: float, alone: bool) -> None:
        with self._gate:
            if not self._gate.wait_for(lambda: not self._alone, timeout=timeout):
                raise OwnerBusy(f"{self.path} is being rewritten (a GDPR erase); waited {timeout:.1f} s.")
            if self._invalidated and self._sharing == 0:
                self._reopen_invalidated()
            if not alone:
                self._sharing += 1
                return
            self._alone = True
            if not self._gate.wait_for(lambda: self._sharing == 0, timeout=timeout):
                self._alone = False
                self._gate.notify_all()
                raise OwnerBusy(f"{self.path} has reads or writes running; waited {timeout:.1f} s for them "
                                f"to finish.")

    def _leave(self, alone: bool) -> None:
        with self._gate:
            if alone:
                self._reopen_if_replaced()
                self._alone = False
            else:
                self._sharing -= 1
            self._gate.notify_all()

    def _reopen_invalidated(self) -> None:
        """DuckDB invalidates a connection whose write failed part way (a checkpoint on a full disk)
        and asks for it to be opened again: until then every write and read of the proxy, the CLI
        and the page failed, until a restart. Reopened here (its WAL replays what was committed)."""
        with contextlib.suppress(duckdb.Error):
            if self._con is not None:
                self._con.close()
        self._con = None
        try:
            self.open()
        except Exception as exc:  # the disk still full: the next cursor tries again
            if time.monotonic() - self._said_at > 30:
                self._said_at = time.monotonic()
                log.error("cannot open %s again after DuckDB invalidated it (%s: %s); tried again at each "
                          "write", self.path, type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
            return
        self._invalidated = False
        log.warning("opened %s again after a write failed and DuckDB invalidated the connection", self.path)

    def _reopen_if_replaced(self) -> None:
        """After an erase renamed a fresh copy over the file, our connection is on the old inode."""
        try:
            replaced = os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            return
        if replaced and self._con is not None:
            self._con.close()
            self.open()


def _invalidates(exc: duckdb.Error) -> bool:
    """Whether DuckDB has given up on the connection (a fatal error, or any error after one)."""
    return isinstance(exc, duckdb.FatalException) or "database has been invalidated" in str(exc)


def start(path: Path) -> Owner:
    """Open ``path`` and serve it to this process's connections, and to others' through the socket
    in its directory (remote.py), until ``stop``."""
    owner = Owner(path)
    owner.open()
    with _registry_lock:
        _owners[_key(path)] = owner
    owner.socket = remote.OwnerSocket(owner, path.parent)
    return owner


def stop(owner: Owner) -> None:
    if owner.socket is not None:
        owner.socket.stop()
    with _registry_lock:
        _owners.pop(_key(owner.path), None)
    owner.close()


def serving(path: Path) -> Owner | None:
    """This process's owner of ``path``, if there is one."""
    return _owners.get(_key(path)) if _owners else None


def _key(path: Path) -> Path:
    return Path(os.path.abspath(path))
