"""Spools: an answer (an export, a GDPR export) written whole before its first byte is sent, so a
slow reader never holds the database (docs/architecture.md, "One writer per file").

A spool is a file without a name (O_TMPFILE) in the data directory's ``spool/``, sealed
(sealed.py) with a key that exists only in this process's memory: its clear bytes touch no disk,
and a process killed mid-export leaves nothing another can read, or, on Linux, nothing at all.
Where a file system cannot make nameless files, Python names it and unlinks it at once; what a
crash in between leaves is removed when the proxy or the web app next starts. When the data
directory's disk is full or read-only, the spool goes to the system's temporary directory
instead, sealed all the same: reading your data must not need a disk you cannot write.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from . import home as home_dir
from .sealed import SealedWriter, unseal

log = logging.getLogger(__name__)
_PREFIX = "export-"
_DISK_UNUSABLE = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
_PIECE = 256 * 1024  # plaintext per sealed record; memory stays at a few of these whatever the size


def spooled(home: Path, write: Callable[[Spool], None]) -> Spool:
    """A spool holding what ``write(spool)`` wrote (see above for where); read it with ``chunks()``."""
    directory = home / home_dir.SPOOL_DIR
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        return _written(Spool(directory), write)
    except OSError as exc:
        if exc.errno not in _DISK_UNUSABLE:
            raise
        log.warning("cannot spool in %s (%s); using the system's temporary directory, sealed all the same",
                    directory, exc.strerror)
    return _written(Spool(None), write)


def filled(home: Path, write_to: Callable[[str], None]) -> Spool:
    """A spool holding what ``write_to(path)`` wrote to ``path``, for a writer that wants a path (DuckDB's COPY)."""
    return spooled(home, lambda spool: spool.fill(write_to))


def _written(spool: Spool, write: Callable[[Spool], None]) -> Spool:
    try:
        write(spool)
        spool.finish()
    except BaseException:
        spool.close()
        raise
    return spool


class Spool(io.RawIOBase):
    """Write the answer into it (``write``, ``text()``, ``fill()``), then read it back once (``chunks()``)."""

    _file: IO[bytes] | None = None

    def __init__(self, directory: Path | None) -> None:
        super().__init__()
        self._file = tempfile.TemporaryFile(dir=directory, prefix=_PREFIX)
        self._secret = os.urandom(32)
        self._sealer = SealedWriter(self._file, self._secret)

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return self._sealer.write(bytes(data))

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # bytes the disk refused: the spool is dropped anyway
                self._file.close()
        super().close()

    @contextlib.contextmanager
    def text(self) -> Iterator[IO[str]]:
        """A UTF-8 text file that writes into the spool in large pieces."""
        text = io.TextIOWrapper(io.BufferedWriter(self, _PIECE), encoding="utf-8")
        yield text
        text.flush()
        text.detach().detach()  # flushed, and this spool stays open

    def fill(self, write_to: Callable[[str], None]) -> None:
        """Call ``write_to(path)``, for a writer that wants a path (DuckDB's COPY): the path is a
        pipe whose bytes are sealed into the spool as they come."""
        read_end, write_end = os.pipe()
        failed: list[BaseException] = []
        pump = threading.Thread(target=self._pump, args=(read_end, failed), name="aispendtrack-spool", daemon=True)
        pump.start()
        try:
            write_to(f"/dev/fd/{write_end}")
        finally:
            os.close(write_end)  # the writer has closed its own end: the pump sees the end
            pump.join()
        if failed:
            raise failed[0]

    def _pump(self, read_end: int, failed: list[BaseException]) -> None:
        with open(read_end, "rb", buffering=_PIECE) as pipe:
            while piece := pipe.read(_PIECE):
                if failed:
                    continue  # keep draining, or the writer would block on a full pipe for ever
                try:
                    self.write(piece)
                except BaseException as exc:  # the disk is full: reported by fill() once the writer is done
                    failed.append(exc)

    def finish(self) -> None:
        """Write the last record and flush it: a disk that refuses it says so here, not while sending."""
        assert self._file is not None
        self._sealer.finish()
        self._file.flush()

    def chunks(self) -> Iterator[bytes]:
        """The answer, a piece at a time; the spool is closed at the end (or when this is closed)."""
        assert self._file is not None
        self._file.seek(0)
        try:
            yield from unseal(self._file, self._secret)
        finally:
            self.close()


def remove_leftovers(home: Path) -> None:
    """At start: remove spools a crash left with a name (see above). Nameless ones never outlive it."""
    directory = home / home_dir.SPOOL_DIR
    if not directory.is_dir():
        return
    for path in directory.glob(_PREFIX + "*"):
        with contextlib.suppress(OSError):
            path.unlink()
