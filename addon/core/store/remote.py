"""The owner's socket: other processes (the CLI, a standalone web app) use the file a proxy keeps
open (owner.py) through it, with the same queries as on a connection of their own.

``owner.sock`` in the data directory, mode 0600. Each client connection is one session: one
cursor of the owner (its own transaction), taken when the session opens and closed with it. The
client's ``RemoteConnection`` is connection-like (``execute``, ``executemany``, ``fetchone``,
``fetchmany``, ``fetchall``, ``description``), so the store's queries run unchanged; a file to
write (an export's ``COPY ... TO``) is passed as an open descriptor (``SCM_RIGHTS``), so the owner
writes where the client could, and never where only the owner could.

Frames: a 4-byte length, then a pickle read with an unpickler that builds only plain values (the
types DuckDB returns). Both ends check that the other runs as the same user (``SO_PEERCRED``), and
the client refuses a socket file another user owns or others may use: it then opens the file
itself, as it does when no proxy runs or one was killed and left its socket behind.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import socket
import stat
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb

from .errors import OwnerAway, StoreError

log = logging.getLogger(__name__)

SOCKET_NAME = "owner.sock"
_HEADER = struct.Struct("!I")
_MAX_FRAME = 1 << 31
# A worker of `proxy --workers N` (only_through_owner) takes an owner that has not answered a
# question (or taken a connection: a full backlog) within this many seconds for away (OwnerAway): a
# stopped or hung owner answers never, and the worker's writer waited for good, holding its rows
# (neither stored nor spilled; at a stop, killed with them). A false alarm costs nothing: the rows
# spill and are replayed, each id once. The CLI waits as long as its query runs (an export takes
# minutes). 10 s: a worker's stop (its writer's last flush, then a spill) must end within the 30 s
# its parent gives it after the drain.
WORKER_ANSWER_S = 10.0
ANSWER_WITHIN_S: float | None = None  # WORKER_ANSWER_S in a worker (bound_answers)
_FETCH_ROWS = 10_000  # rows a fetchall brings per round trip: memory stays bounded on both ends
# What a frame may build: the values DuckDB takes and returns, nothing callable.
_ALLOWED = {("datetime", n) for n in ("datetime", "date", "time", "timedelta", "timezone")} | {
    ("decimal", "Decimal"), ("uuid", "UUID"), ("builtins", "set"), ("builtins", "frozenset"),
    ("zoneinfo", "ZoneInfo"), ("pytz", "_p"), ("pytz", "_UTC")}


class OwnerUnsafe(StoreError):
    """The socket is not one this user's proxy made: another user's, or open to others."""


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not a value the owner's socket carries")
        return super().find_class(module, name)


def _send(sock: socket.socket, message: object, fds: list[int] | None = None) -> None:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    frame = _HEADER.pack(len(body)) + body
    if fds:
        rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))
        sock.sendmsg([frame[:_HEADER.size]], [rights])
        sock.sendall(frame[_HEADER.size:])
    else:
        sock.sendall(frame)


def _receive(sock: socket.socket) -> tuple[Any, list[int]]:
    head, ancillary, _, _ = sock.recvmsg(_HEADER.size, socket.CMSG_SPACE(struct.calcsize("i")))
    fds = [fd for level, kind, data in ancillary if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
           for fd in struct.unpack(f"{len(data) // 4}i", data[:len(data) - len(data) % 4])]
    try:
        if not head:
            raise EOFError
        head += _exactly(sock, _HEADER.size - len(head))
        (size,) = _HEADER.unpack(head)
        if size > _MAX_FRAME:
            raise StoreError("a frame on the owner's socket is too large")
        return _Unpickler(io.BytesIO(_exactly(sock, size))).load(), fds
    except BaseException:
        _close_all(fds)  # a frame that is not whole or not plain values: its descriptors are no one's
        raise


def _exactly(sock: socket.socket, size: int) -> bytes:
    parts, left = [], size
    while left:
        part = sock.recv(min(left, 1 << 20))
        if not part:
            raise EOFError
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _peer_uid(sock: socket.socket) -> int:
    _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid


# --- the client -------------------------------------------------------------------------------


def bound_answers() -> None:
    """This process is a worker: its questions to the owner are answered within WORKER_ANSWER_S."""
    global ANSWER_WITHIN_S
    ANSWER_WITHIN_S = WORKER_ANSWER_S


class RemoteConnection:
    """A cursor of the owner, used from another process (see the module's docstring)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._sock_timeout = 0.0
        self._timed_out = False
        self.description: list[tuple] | None = None
        self._rows: list[tuple] = []  # fetched but not yet handed out
        self._more = False  # the owner holds more rows of the last result

    def _ask(self, *request: object, fds: list[int] | None = None) -> Any:
        if self._timed_out:  # the same session asked again (a cycle's key refresh after its rows)
            raise OwnerAway("the owner of the data did not answer this session's last question; not asked again")
        try:
            _send(self._sock, request, fds)
            (status, value), _ = _receive(self._sock)
        except TimeoutError:
            self._sock.close()  # a late answer must never be read as the next question's
            self._timed_out = True
            raise OwnerAway(f"the owner of the data did not answer within {self._sock_timeout:g} s (stopped or "
                            f"hung?); rows wait in the spill directory") from None
        except (EOFError, ConnectionError) as exc:  # click said only "Aborted!" of an EOFError
            raise StoreError(f"the proxy's owner of the data stopped answering mid-request ({type(exc).__name__}; "
                             "killed or restarting?); run the command again") from None
        if status == "error":
            raise _rebuilt(*value)
        return value

    def bound(self, seconds: float) -> None:
        self._sock_timeout = seconds
        self._sock.settimeout(seconds)

    def execute(self, sql: str, parameters: object = None) -> RemoteConnection:
        self.description, self._more = self._ask("execute", sql, parameters)
        self._rows = []
        return self

    def executemany(self, sql: str, parameters: object = None) -> RemoteConnection:
        self.description, self._more = self._ask("executemany", sql, parameters)
        self._rows = []
        return self

    def fetchmany(self, size: int = 1) -> list[tuple]:
        while len(self._rows) < size and self._more:
            rows, self._more = self._ask("fetch", max(size - len(self._rows), _FETCH_ROWS))
            self._rows += rows
        taken, self._rows = self._rows[:size], self._rows[size:]
        return taken

    def fetchone(self) -> tuple | None:
        found = self.fetchmany(1)
        return found[0] if found else None

    def fetchall(self) -> list[tuple]:
        rows = []
        while batch := self.fetchmany(_FETCH_ROWS):
            rows += batch
        return rows

    @contextlib.contextmanager
    def output_path(self, path: str) -> Iterator[str]:
        """Where the owner can write the file ``path``, for one statement: the path of a descriptor
        passed to it. A pipe (a spool's) goes as it is; into a file opened here, as this user, the
        bytes go through a pipe of our own (DuckDB writes a regular file by a temporary name)."""
        if stat.S_ISFIFO(os.stat(path).st_mode if os.path.exists(path) else 0):
            fd = os.open(path, os.O_WRONLY)
            try:
                yield self._ask("file", fds=[fd])
            finally:
                os.close(fd)
            return
        target = open(path, "wb")  # noqa: SIM115  (closed by the pump, or below)
        read_end, write_end = os.pipe()
        failed: list[OSError] = []
        pump = threading.Thread(target=_pump, args=(read_end, target, failed), name="aispendtrack-owner-file",
                                daemon=True)
        pump.start()
        try:
            yield self._ask("file", fds=[write_end])
        finally:
            os.close(write_end)  # the owner closed its copy after the statement: the pump sees the end
            pump.join()
            if failed:  # the file is short (a full disk): the cause, not the owner's broken pipe, if any
                raise failed[0]

    def query_progress(self) -> float:
        return -1

    def interrupt(self) -> None:
        """Time limits run in the owner (``session``'s time_limit), next to the query."""

    def close(self) -> None:
        self._sock.close()


def _pump(read_end: int, target, failed: list[OSError]) -> None:
    """Copy the pipe into ``target``; a write that fails ends the copy (the owner's next write then
    fails too) and is kept in ``failed`` for the caller to raise."""
    try:
        with open(read_end, "rb") as pipe, target:
            while piece := pipe.read(1 << 20):
                target.write(piece)
    except OSError as exc:
        failed.append(exc)


def _rebuilt(module: str, name: str, text: str) -> Exception:
    """The owner's exception as the same class here, when it is DuckDB's or the store's own."""
    found: object = None
    if module in ("duckdb", "_duckdb"):
        found = getattr(duckdb, name, None)
    elif module.startswith("addon.core.store."):
        import importlib
        found = getattr(importlib.import_module(module), name, None)
    if isinstance(found, type) and issubclass(found, Exception):
        return found(text)
    return StoreError(f"the proxy's store failed ({name}: {text})")


def socket_path(home: Path) -> Path:
    return home / SOCKET_NAME


@contextlib.contextmanager
def session(home: Path, timeout: float, alone: bool = False,
            time_limit: float | None = None) -> Iterator[RemoteConnection | None]:
    """A connection through the owner of ``home``'s file, or None when no owner answers there."""
    sock = _connect(socket_path(home))
    if sock is None:
        yield None
        return
    con = RemoteConnection(sock)
    try:
        if ANSWER_WITHIN_S is not None:  # the owner answers the open once the file is free, or busy
            con.bound(timeout + ANSWER_WITHIN_S)
        con._ask("open", {"timeout": timeout, "alone": alone, "time_limit": time_limit})
        if ANSWER_WITHIN_S is not None:
            con.bound(ANSWER_WITHIN_S)
        yield con
    finally:
        con.close()


def _connect(path: Path) -> socket.socket | None:
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return None
    _check_file(path, found)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(ANSWER_WITHIN_S)  # an owner that accepts no more blocks a connect for good
    try:
        sock.connect(str(path))
    except TimeoutError:
        sock.close()
        raise OwnerAway(f"the owner of the data took no connection within {ANSWER_WITHIN_S:g} s (stopped or "
                        f"hung?); rows wait in the spill directory") from None
    except OSError:  # ECONNREFUSED: a proxy killed with kill -9 left its socket; nobody owns the file
        sock.close()
        return None
    if _peer_uid(sock) != os.getuid():
        sock.close()
        raise OwnerUnsafe(f"{path} is served by another user's process; refusing to use it.")
    return sock


def _check_file(path: Path, found: os.stat_result) -> None:
    if not stat.S_ISSOCK(found.st_mode):
        raise OwnerUnsafe(f"{path} is not a socket; remove it (a running proxy makes it anew).")
    if found.st_uid != os.getuid():
        raise OwnerUnsafe(f"{path} belongs to user id {found.st_uid}, not to you ({os.getuid()}): refusing to "
                          f"send it your queries. Remove it, or run as the user who runs the proxy.")
    if found.st_mode & 0o077:
        raise OwnerUnsafe(f"{path} may be used by other users (mode {stat.S_IMODE(found.st_mode):o}): refusing it. "
                          f"Remove it; a running proxy makes it anew, mode 600.")


# --- the server (in the owner's process) ------------------------------------------------------


class OwnerSocket:
    """Serves ``owner``'s file on ``home``/owner.sock, one thread per client session."""

    def __init__(self, owner, home: Path) -> None:
        self.owner, self.path = owner, socket_path(home)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Made under a name of its own with mode 600 and renamed into place: never reachable as
        # owner.sock with a wider mode, and it replaces what a proxy killed with kill -9 left.
        building = self.path.with_name(f"{SOCKET_NAME}.{os.getpid()}")
        building.unlink(missing_ok=True)
        self._listener.bind(str(building))
        os.chmod(building, 0o600)
        os.replace(building, self.path)
        self._listener.listen(64)
        self._thread = threading.Thread(target=self._accept, name="aispendtrack-owner-socket", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed by stop()
                return
            if _peer_uid(client) != os.getuid():
                client.close()  # another user (only root can reach a 600 socket, but say no anyway)
                continue
            threading.Thread(target=_Session(self.owner, client).run, name="aispendtrack-owner-session",
                             daemon=True).start()

    def stop(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._listener.close()


class _Session:
    def __init__(self, owner, sock: socket.socket) -> None:
        self.owner, self.sock = owner, sock
        self._files: list[int] = []

    def run(self) -> None:
        try:
            request, fds = _receive(self.sock)
            _close_all(fds)
            if request[0] != "open":
                return
            options = request[1]
            from .connection import time_limited
            with self.owner.cursor(options["timeout"], alone=options["alone"]) as cur:
                _send(self.sock, ("ok", None))
                with time_limited(cur, options["time_limit"]):
                    self._serve(cur)
        except (EOFError, ConnectionError):
            pass
        except Exception as exc:  # the open failed (busy, stopping): the client hears why
            with contextlib.suppress(OSError):
                _send(self.sock, ("error", _described(exc)))
        finally:
            self._close_files()
            self.sock.close()

    def _serve(self, cur: duckdb.DuckDBPyConnection) -> None:
        while True:
            try:
                request, fds = _receive(self.sock)
            except (EOFError, ConnectionError):
                return
            if fds and not (isinstance(request, tuple) and request[:1] == ("file",)):
                _close_all(fds)  # sent along with anything else: kept, they would pile up in the owner
                fds = []
            try:
                answer = self._do(cur, request, fds)
            except duckdb.InterruptException:
                raise  # the time limit: the whole session ends, as a local read would
            except Exception as exc:
                _send(self.sock, ("error", _described(exc)))
                continue
            _send(self.sock, ("ok", answer))

    def _do(self, cur: duckdb.DuckDBPyConnection, request: tuple, fds: list[int]) -> object:
        kind = request[0]
        if kind in ("execute", "executemany"):
            getattr(cur, kind)(request[1], request[2])
            self._close_files()  # a file passed for this statement is written now
            return _description(cur), cur.description is not None
        if kind == "fetch":
            rows = cur.fetchmany(request[1])
            return rows, len(rows) == request[1]
        if kind == "file":
            self._files += fds
            return f"/dev/fd/{fds[0]}"
        raise StoreError(f"unknown request {kind!r}")

    def _close_files(self) -> None:
        while self._files:
            os.close(self._files.pop())


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _description(cur: duckdb.DuckDBPyConnection) -> list[tuple] | None:
    """The columns' names and types; a type as its name (DuckDB's type objects are not plain values)."""
    if cur.description is None:
        return None
    return [(column[0], str(column[1]), *column[2:]) for column in cur.description]


def _described(exc: BaseException) -> tuple[str, str, str]:
    return type(exc).__module__, type(exc).__name__, str(exc)

